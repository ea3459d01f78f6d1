-- Separate databases for the user and order services, as in the original
-- design: neither service can read the other's tables.
CREATE DATABASE users;
CREATE DATABASE orders;
