-- A function's own egress (issue 19): whether its execution environments' outbound connections
-- may leave their VM ('allow': as the server's egress policy says; 'deny': only Ember's API and
-- DNS on the VM's gateway), or NULL: the server's default (`ember serve --egress`). One setting
-- for the function and all its published versions (versions read it from here through their
-- function), deleted with the function's row. Portable SQL only (see 0001).

ALTER TABLE functions ADD COLUMN egress TEXT
    CHECK (egress IS NULL OR egress IN ('allow', 'deny'));
