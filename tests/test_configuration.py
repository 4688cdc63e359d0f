"""Every variable the settings read is documented in .env.example."""

import re

from tests.support.processes import ROOT

READ = re.compile(r'env\.(?:str|int|float|bool|list|path|db)\(\s*"([A-Z_]+)"')


def test_every_environment_variable_is_in_env_example():
    settings_source = (ROOT / "vertex_email" / "settings.py").read_text()
    documented = (ROOT / ".env.example").read_text()
    variables = set(READ.findall(settings_source)) - {"SMTP_USERNAME", "SMTP_PASSWORD"}
    assert len(variables) > 30
    missing = sorted(v for v in variables if f"#{v}=" not in documented)
    assert missing == [], f"document these in .env.example: {missing}"
