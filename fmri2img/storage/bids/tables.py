"""BIDS text files over fsspec: JSON sidecars and TSV tables (``n/a`` is missing, per the specification).

BIDS "Common principles: Tabular files": tab-separated, a header row, ``n/a`` for a missing value,
UTF-8. Every reader takes an fsspec filesystem and a path inside it (never a URL) and raises
:class:`~fmri2img.storage.bids.errors.BIDSFormatError` naming the file when it cannot be read.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from fmri2img.storage.bids.errors import BIDSFormatError

__all__ = ["shown", "read_json", "read_tsv"]


def shown(fs: Any, path: str) -> str:
    """How a file is named in messages: the local path, or ``scheme://path`` on other filesystems."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def read_json(fs: Any, path: str) -> dict[str, Any]:
    """Read a JSON object (a sidecar, ``dataset_description.json``).

    Raises
    ------
    BIDSFormatError
        The file is missing, not JSON, or not a JSON object.
    """
    try:
        with fs.open(path, "rb") as f:
            value = json.loads(f.read().decode("utf-8-sig"))
    except FileNotFoundError as exc:
        raise BIDSFormatError(f"{shown(fs, path)} does not exist; expected a JSON file there. Fix: check the "
                              f"dataset URL and the file name") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BIDSFormatError(f"{shown(fs, path)} is not valid JSON ({exc}); BIDS sidecars are JSON objects. "
                              f"Fix: repair the file (a JSON linter shows the line)") from exc
    if not isinstance(value, dict):
        raise BIDSFormatError(f"{shown(fs, path)} holds a JSON {type(value).__name__}; expected a JSON object "
                              f"of key-value pairs. Fix: wrap the content in {{...}}")
    return value


def read_tsv(fs: Any, path: str) -> pd.DataFrame:
    """Read a BIDS TSV table: one column per header field, ``n/a`` as missing (NaN).

    Numeric columns come back as float or int, text columns as strings (``object``). Empty cells
    are kept as empty strings in text columns, as the specification does not call them missing.

    Raises
    ------
    BIDSFormatError
        The file is missing, empty, or not tab-separated with a header row.
    """
    try:
        with fs.open(path, "rb") as f:
            table = pd.read_csv(f, sep="\t", na_values=["n/a"], keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise BIDSFormatError(f"{shown(fs, path)} does not exist; expected a TSV table there. Fix: check the "
                              f"dataset URL and the file name") from exc
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise BIDSFormatError(f"{shown(fs, path)} is not a BIDS TSV table ({exc}); expected tab-separated values "
                              f"with a header row and n/a for missing values. Fix: re-export it with tabs as "
                              f"separators") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table
