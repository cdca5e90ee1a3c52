-- SnapStart (Lambda's `SnapStart.ApplyOn`): whether a function's published versions start from a
-- template taken after the function's own init. A setting like the others, so a published
-- version keeps the value `$LATEST` had when it was published. Portable SQL only (see 0001).
--
-- 'None' or 'PublishedVersions', in Lambda's spelling; existing functions and versions get
-- 'None', Lambda's default.

ALTER TABLE functions ADD COLUMN snap_start TEXT NOT NULL DEFAULT 'None'
    CHECK (snap_start IN ('None', 'PublishedVersions'));
ALTER TABLE function_versions ADD COLUMN snap_start TEXT NOT NULL DEFAULT 'None'
    CHECK (snap_start IN ('None', 'PublishedVersions'));
