"""README's Reliability table cites tests by file and name: every cited test exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_test_the_reliability_table_cites_exists():
    section = README[README.index("## Reliability"):README.index("## Runbooks and NoETL")]
    legend = dict(re.findall(r"([A-Z]) = `(?:tests/)?(test_[a-z0-9_]+\.py)`", section))
    assert len(legend) >= 10, legend
    cited = re.findall(r"\b([A-Z])::(test_[A-Za-z0-9_*]+)", section)
    assert cited
    missing = []
    for letter, name in cited:
        source = (ROOT / "tests" / legend[letter]).read_text(encoding="utf-8")
        pattern = name.replace("*", "[A-Za-z0-9_]*")
        if not re.search(r"^def %s\(" % pattern, source, re.M):
            missing.append("%s::%s" % (legend[letter], name))
    assert missing == []
