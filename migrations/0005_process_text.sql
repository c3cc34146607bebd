-- Process texts have no length limit in micromegas's clients (a CI executable path can pass 255
-- characters): as VARCHAR(255) such a row was refused on every retry and the process's data stayed
-- invisible. TEXT keeps them whole; queries see the same type family.
ALTER TABLE processes
    ALTER COLUMN exe TYPE TEXT,
    ALTER COLUMN username TYPE TEXT,
    ALTER COLUMN realname TYPE TEXT,
    ALTER COLUMN computer TYPE TEXT,
    ALTER COLUMN distro TYPE TEXT,
    ALTER COLUMN cpu_brand TYPE TEXT;
