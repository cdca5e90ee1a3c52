-- A function's tags (TagResource, CreateFunction's Tags) and its recursive loop setting
-- (PutFunctionRecursionConfig). Portable SQL only (see 0001).
--
-- Both belong to the function itself (its unqualified name, not a version or alias, as in
-- Lambda) and reference it ON DELETE CASCADE: deleting the function removes them in the same
-- statement, and none can be written for a function that does not exist.

CREATE TABLE function_tags (
    account_id     TEXT NOT NULL,
    function_name  TEXT NOT NULL,
    tag_key        TEXT NOT NULL,
    tag_value      TEXT NOT NULL,
    PRIMARY KEY (account_id, function_name, tag_key),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);

-- A row only for a function whose setting was put; none means Lambda's default, Terminate.
CREATE TABLE function_recursion (
    account_id      TEXT NOT NULL,
    function_name   TEXT NOT NULL,
    recursive_loop  TEXT NOT NULL CHECK (recursive_loop IN ('Allow', 'Terminate')),
    PRIMARY KEY (account_id, function_name),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);
