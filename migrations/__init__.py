"""The PostgreSQL schema of spanlake as numbered SQL files, applied in order by lakehouse.migrate."""
