"""Download the official BurstGPT release files into the user cache directory, resumably.

A partial download is kept as `NAME.part` and resumed with an HTTP Range request; the file only takes its
final name once complete (and, when a size or SHA-256 is known or given, checked).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from burstgpt.errors import BurstGPTError

#: Official BurstGPT release (HPMLL/BurstGPT on GitHub); override with --base-url or BURSTGPT_BASE_URL.
DEFAULT_BASE_URL = "https://github.com/HPMLL/BurstGPT/releases/download/v1.1"


@dataclass(frozen=True)
class ReleaseFile:
    """A known release file. `size_bytes`/`sha256` are None where not published; then they are not checked."""

    name: str
    description: str
    size_bytes: int | None = None
    sha256: str | None = None


RELEASE_FILES = {
    f.name: f
    for f in (
        ReleaseFile("BurstGPT_1.csv", "first 2 months, with failures (6-column schema)"),
        ReleaseFile("BurstGPT_2.csv", "second part, with failures (6-column schema)"),
        ReleaseFile("BurstGPT_without_fails_1.csv", "first part, failed requests removed"),
        ReleaseFile("BurstGPT_without_fails_2.csv", "second part, failed requests removed"),
    )
}


def default_cache_dir() -> Path:
    """Where downloads are cached: BURSTGPT_CACHE_DIR, else the platform's user cache directory."""
    env = os.environ.get("BURSTGPT_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("burstgpt")) / "traces"


def download_release_file(
    name: str,
    *,
    base_url: str | None = None,
    cache_dir: Path | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Fetch `name` from the release (resuming a partial download) and return its cached path.

    `progress(bytes_done, bytes_total_or_None)` is called as data arrives. Unknown names are allowed (a future
    release file) but nothing is checked for them unless `sha256` is given.
    """
    if "/" in name or name.startswith("."):
        raise BurstGPTError(f"invalid release file name {name!r}")
    known = RELEASE_FILES.get(name)
    expected_sha = sha256 or (known.sha256 if known else None)
    expected_size = known.size_bytes if known else None
    base_url = (base_url or os.environ.get("BURSTGPT_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / name
    part = cache_dir / f"{name}.part"
    if target.exists() and not force:
        _verify(target, expected_size, expected_sha, remove_on_failure=False)
        return target
    if force and part.exists():
        part.unlink()

    url = f"{base_url}/{name}"
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "burstgpt"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 - user-chosen URL
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # the .part is already whole
            os.replace(part, target)
            _verify(target, expected_size, expected_sha, remove_on_failure=True)
            return target
        raise BurstGPTError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BurstGPTError(f"download of {url} failed: {reason}") from None

    with response:
        resumed = response.status == 206
        if not resumed:
            done = 0  # server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else expected_size
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except (OSError, urllib.error.URLError) as exc:
            raise BurstGPTError(
                f"download of {url} interrupted after {done} bytes ({exc}); run again to resume"
            ) from None
    if total is not None and done < total:
        raise BurstGPTError(f"download of {url} incomplete ({done} of {total} bytes); run again to resume")
    os.replace(part, target)
    _verify(target, expected_size, expected_sha, remove_on_failure=True)
    return target


def _verify(path: Path, size: int | None, sha256: str | None, *, remove_on_failure: bool) -> None:
    problem = None
    if size is not None and path.stat().st_size != size:
        problem = f"size {path.stat().st_size} bytes, expected {size}"
    elif sha256 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != sha256.lower():
            problem = f"sha256 {digest.hexdigest()}, expected {sha256.lower()}"
    if problem:
        if remove_on_failure:
            path.unlink()
        raise BurstGPTError(f"{path}: {problem}" + ("; the file was removed" if remove_on_failure else ""))
