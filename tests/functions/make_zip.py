#!/usr/bin/env python3
"""Packages Lambda code as a zip: ``make_zip.py OUT.zip SOURCE...``.

Each SOURCE is a file, stored at the zip's root under its own name, or a directory, whose
contents are stored at the root. Unix modes are kept (a ``bootstrap`` must be 0755); timestamps
are fixed and entries sorted, so the same inputs give the same bytes. ``__pycache__`` is left out.
Usable as a module too: ``make_zip.build(out, sources)``.
"""

import os
import stat
import sys
import zipfile


def entries(source):
    """(path on disk, name in the zip) for one SOURCE."""
    if os.path.isfile(source):
        yield source, os.path.basename(source)
        return
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = os.path.join(root, name)
            yield path, os.path.relpath(path, source)


def build(out, sources):
    tmp = out + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for source in sources:
            for path, name in entries(source):
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.create_system = 3  # Unix: the mode bits below are read
                info.external_attr = (stat.S_IFREG | (os.stat(path).st_mode & 0o777)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as f:
                    z.writestr(info, f.read())
    os.replace(tmp, out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    build(sys.argv[1], sys.argv[2:])
