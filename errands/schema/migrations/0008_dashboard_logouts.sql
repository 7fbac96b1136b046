-- Dashboard sessions ended by logging out. A session cookie is signed, not
-- stored, so it stays valid until its expiry wherever it is presented; this
-- list, shared by every API process and host, refuses it from its logout on.
-- A row is kept only until the cookie would have expired anyway.
create table errands_dashboard_logouts (
    nonce      text primary key,
    expires_at timestamptz not null
);
