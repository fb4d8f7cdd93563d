PRAGMA busy_timeout = 10000
