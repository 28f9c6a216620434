"""Listings of a bucket index (ListObjects(V2), ListObjectVersions): pure functions over a
:class:`~s3proxy.devstore.records.BucketIndex`; the caller holds the store's lock."""

from __future__ import annotations

import bisect

from s3proxy.devstore.records import BucketIndex, ListResult, ObjectInfo


def list_versions(
    index: BucketIndex, *, prefix: str, delimiter: str, key_marker: str, version_marker: str, max_keys: int
) -> tuple[list[tuple[ObjectInfo, bool]], list[str], bool, tuple[str, str] | None]:
    """ListObjectVersions: ((version, is_latest) newest first per key, common prefixes,
    truncated, (next key marker, next version marker) when truncated)."""
    keys = sorted(set(index.objects) | set(index.versions))
    start = bisect.bisect_left(keys, prefix)
    out: list[tuple[ObjectInfo, bool]] = []
    prefixes: list[str] = []
    count = 0
    for key in keys[start:]:
        if not key.startswith(prefix):
            break
        if key_marker and key < key_marker:
            continue
        if delimiter:
            pos = key.find(delimiter, len(prefix))
            if pos >= 0:
                common = key[: pos + len(delimiter)]
                if (prefixes and prefixes[-1] == common) or (key_marker and common <= key_marker):
                    continue
                if count >= max_keys:
                    return out, prefixes, True, _next_markers(out, prefixes)
                prefixes.append(common)
                count += 1
                continue
        current = index.objects.get(key)
        chain = ([current] if current is not None else []) + index.versions.get(key, [])
        if key == key_marker:
            ids = [v.vid for v in chain]
            if not version_marker or version_marker not in ids:
                continue
            chain = chain[ids.index(version_marker) + 1:]
            skip_latest = True
        else:
            skip_latest = False
        for i, v in enumerate(chain):
            if count >= max_keys:
                return out, prefixes, True, _next_markers(out, prefixes)
            out.append((v, i == 0 and not skip_latest))
            count += 1
    return out, prefixes, False, None


def _next_markers(
    out: list[tuple[ObjectInfo, bool]], prefixes: list[str]
) -> tuple[str, str]:
    last_v = out[-1][0] if out else None
    last_p = prefixes[-1] if prefixes else None
    if last_v is not None and (last_p is None or last_v.key > last_p):
        return last_v.key, last_v.vid
    assert last_p is not None
    return last_p, ""


def list_objects(index: BucketIndex, *, prefix: str, delimiter: str, marker: str, max_keys: int) -> ListResult:
    """Keys after ``marker`` starting with ``prefix``, rolled up at ``delimiter``, in UTF-8 order."""
    keys = index.keys()
    objects = index.objects
    if marker:
        start = bisect.bisect_right(keys, marker)
        if prefix > marker:
            start = bisect.bisect_left(keys, prefix)
    else:
        start = bisect.bisect_left(keys, prefix)
    contents: list[ObjectInfo] = []
    prefixes: list[str] = []
    count = 0
    last: str | None = None
    truncated = False
    i = start
    n = len(keys)
    while i < n:
        key = keys[i]
        if not key.startswith(prefix):
            break
        common = None
        if delimiter:
            pos = key.find(delimiter, len(prefix))
            if pos >= 0:
                common = key[: pos + len(delimiter)]
        if common is not None and (common == last or common == marker):
            # Everything under this common prefix rolls up into it: skip past it.
            i = bisect.bisect_left(keys, common + "\U0010ffff", i + 1)
            while i < n and keys[i].startswith(common):
                i += 1
            continue
        if count >= max_keys:
            truncated = True
            break
        if common is not None:
            prefixes.append(common)
            last = common
        else:
            contents.append(objects[key])
            last = key
        count += 1
        i += 1
    return ListResult(contents, prefixes, truncated, last if truncated else None)
