/* A receiver of HTTP/1.1 POST bodies that is not Python: the machine's ceiling for ingestion bodies
 * over loopback (benchmarks/ingest_ceiling.py --native compiles and runs it).
 *
 *     bare_receiver LISTEN_FD MODE [STORE_DIR]
 *
 * One thread per connection, as many requests per connection as the client sends (kept alive, each
 * with a Content-Length, the next sent after the answer). MODE says what is done with each body before
 * the empty 200 answer:
 *   none    received into a buffer of the connection (recv), nothing stored;
 *   write   received as `none`, then written create-only as ObjectStore.put_if_absent writes a local
 *           object: a temporary file written 64 KiB a write(), hard-linked to its name, unlinked;
 *   splice  moved socket -> pipe -> temporary file by splice(2), no copy through user space, then
 *           linked as `write` does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEAD_BYTES (32 * 1024)
#define WRITE_CHUNK (64 * 1024)
#define PIPE_BYTES (1024 * 1024)

static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
static const char *mode;
static const char *store_dir;
static atomic_long next_object;

struct connection {
    int fd;
    char head[HEAD_BYTES];
    size_t head_filled;
    char *body;
    size_t body_capacity;
    int pipe[2];
};

static void fail(const char *what) {
    perror(what);
    exit(1);
}

/* Reads until a whole head is in `c->head`; the head's length (with its blank line), 0 at the end. */
static size_t read_head(struct connection *c) {
    for (;;) {
        char *end = memmem(c->head, c->head_filled, "\r\n\r\n", 4);
        if (end != NULL)
            return (size_t)(end - c->head) + 4;
        if (c->head_filled == HEAD_BYTES)
            return 0;
        ssize_t got = recv(c->fd, c->head + c->head_filled, HEAD_BYTES - c->head_filled, 0);
        if (got <= 0)
            return 0;
        c->head_filled += (size_t)got;
    }
}

static long content_length(const char *head, size_t length) {
    for (const char *line = head; line < head + length;) {
        const char *next = memmem(line, (size_t)(head + length - line), "\r\n", 2);
        if (next == NULL)
            break;
        if (strncasecmp(line, "Content-Length:", 15) == 0)
            return strtol(line + 15, NULL, 10);
        line = next + 2;
    }
    return -1;
}

static int create_temporary(char *path, size_t size) {
    snprintf(path, size, "%s/%ld.block.tmp", store_dir, atomic_fetch_add(&next_object, 1));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0)
        fail("open");
    return fd;
}

/* Links the written temporary file to its name (create-only) and removes the temporary name. */
static void link_object(const char *temporary) {
    char path[4096];
    snprintf(path, sizeof path, "%.*s", (int)(strlen(temporary) - 4), temporary);
    if (link(temporary, path) != 0)
        fail("link");
    unlink(temporary);
}

static void write_all(int fd, const char *data, size_t length) {
    while (length > 0) {
        ssize_t wrote = write(fd, data, length < WRITE_CHUNK ? length : WRITE_CHUNK);
        if (wrote < 0)
            fail("write");
        data += wrote;
        length -= (size_t)wrote;
    }
}

/* Receives `length` body bytes into the connection's buffer (the first `arrived` are already there). */
static int receive_body(struct connection *c, size_t arrived, size_t length) {
    while (arrived < length) {
        ssize_t got = recv(c->fd, c->body + arrived, length - arrived, 0);
        if (got <= 0)
            return -1;
        arrived += (size_t)got;
    }
    return 0;
}

/* Moves `length` body bytes from the socket into `file` through the connection's pipe. */
static int splice_body(struct connection *c, int file, size_t length) {
    while (length > 0) {
        ssize_t moved = splice(c->fd, NULL, c->pipe[1], NULL, length < PIPE_BYTES ? length : PIPE_BYTES,
                               SPLICE_F_MOVE | SPLICE_F_MORE);
        if (moved <= 0)
            return -1;
        length -= (size_t)moved;
        while (moved > 0) {
            ssize_t out = splice(c->pipe[0], NULL, file, NULL, (size_t)moved, SPLICE_F_MOVE);
            if (out <= 0)
                fail("splice to file");
            moved -= out;
        }
    }
    return 0;
}

/* Serves one request whose head is `head_length` bytes of `c->head`; -1 when the connection ends. */
static int serve_request(struct connection *c, size_t head_length) {
    long declared = content_length(c->head, head_length);
    if (declared < 0)
        return -1;
    size_t length = (size_t)declared;
    size_t arrived = c->head_filled - head_length;
    if (arrived > length)
        arrived = length; /* the client sends the next request only after the answer */
    if (strcmp(mode, "splice") == 0) {
        char temporary[4096];
        int file = create_temporary(temporary, sizeof temporary);
        write_all(file, c->head + head_length, arrived);
        int failed = splice_body(c, file, length - arrived);
        close(file);
        if (failed)
            return -1;
        link_object(temporary);
    } else {
        if (length > c->body_capacity) {
            free(c->body);
            c->body = malloc(length);
            c->body_capacity = length;
        }
        memcpy(c->body, c->head + head_length, arrived);
        if (receive_body(c, arrived, length) != 0)
            return -1;
        if (strcmp(mode, "write") == 0) {
            char temporary[4096];
            int file = create_temporary(temporary, sizeof temporary);
            write_all(file, c->body, length);
            close(file);
            link_object(temporary);
        }
    }
    c->head_filled = 0;
    return send(c->fd, OK, sizeof OK - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof OK - 1) ? 0 : -1;
}

static void *serve_connection(void *argument) {
    struct connection *c = argument;
    if (pipe(c->pipe) != 0)
        fail("pipe");
    fcntl(c->pipe[1], F_SETPIPE_SZ, PIPE_BYTES);
    for (;;) {
        size_t head_length = read_head(c);
        if (head_length == 0 || serve_request(c, head_length) != 0)
            break;
    }
    close(c->fd);
    close(c->pipe[0]);
    close(c->pipe[1]);
    free(c->body);
    free(c);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[2], "none") != 0 && argc < 4)) {
        fprintf(stderr, "usage: %s LISTEN_FD none|write|splice [STORE_DIR]\n", argv[0]);
        return 2;
    }
    int listener = atoi(argv[1]);
    mode = argv[2];
    store_dir = argc > 3 ? argv[3] : NULL;
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0)
            fail("accept");
        struct connection *c = calloc(1, sizeof *c);
        c->fd = fd;
        pthread_t thread;
        if (pthread_create(&thread, NULL, serve_connection, c) != 0)
            fail("pthread_create");
        pthread_detach(thread);
    }
}
