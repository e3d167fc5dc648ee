"""README.md is held to the module's one table of payload keys."""

import re
from pathlib import Path

import bump_image

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def readme_payload_rows():
    """The rows of README's payload table: {key cell: (type, default, meaning)}."""
    start = README.index("| key | type | default | meaning |")
    rows = {}
    for line in README[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 4, line
        rows[cells[0]] = tuple(cells[1:])
    return rows


def expected_rows():
    rows = {}
    for key in bump_image.PAYLOAD_KEYS:
        if key.alias_of:
            continue
        aliases = "".join(" (alias `%s`)" % k.name for k in bump_image.PAYLOAD_KEYS
                          if k.alias_of == key.name)
        rows["`%s`%s" % (key.name, aliases)] = (key.type_text(), key.default_text(),
                                                key.meaning)
    return rows


def test_readme_payload_table_is_the_key_table():
    got, want = readme_payload_rows(), expected_rows()
    assert list(got) == list(want), "README's payload table lists other keys, or another order"
    for cell, row in want.items():
        assert got[cell] == row, "README's row for %s disagrees with PAYLOAD_KEYS" % cell


def test_every_key_is_documented_once_and_aliases_point_at_keys():
    names = [k.name for k in bump_image.PAYLOAD_KEYS]
    assert len(names) == len(set(names))
    for key in bump_image.PAYLOAD_KEYS:
        assert key.meaning and key.kind in bump_image._CHECKERS
        assert key.alias_of is None or key.alias_of in names
    cells = " ".join(readme_payload_rows())
    assert sorted(re.findall(r"`([a-z_]+)`", cells)) == sorted(names)
