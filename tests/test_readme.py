"""The README's configuration examples are valid configurations."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fmri2img import config as cfg

README = Path(__file__).resolve().parents[1] / "README.md"


def _toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_toml_blocks())))
def test_readme_toml_blocks_validate(index):
    config = cfg.loads(_toml_blocks()[index])
    assert config.store.url
    assert cfg.loads(cfg.dumps(config)).to_dict().keys() == config.to_dict().keys()
