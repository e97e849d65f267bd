"""Vendor base URLs live in the integrations; settings only hold operator overrides."""

from integrations import REGISTRY
from service.config import Settings
from service.runtime import Runtime


def test_defaults_come_from_the_integrations(monkeypatch):
    for key in REGISTRY:
        monkeypatch.delenv(f"PBXRELAY_{key.upper()}_API_URL", raising=False)
    urls = Runtime(Settings(_env_file=None)).api_urls()
    assert urls == {key: cls.default_api_url for key, cls in REGISTRY.items()}
    assert urls["slack"] == "https://slack.com/api/"


def test_an_env_override_replaces_only_its_vendor(monkeypatch):
    monkeypatch.setenv("PBXRELAY_TRELLO_API_URL", "http://127.0.0.1:9002")
    monkeypatch.setenv("PBXRELAY_SLACK_API_URL", "")  # as the empty line in .env.example
    urls = Runtime(Settings(_env_file=None)).api_urls()
    assert urls["trello"] == "http://127.0.0.1:9002"
    assert urls["slack"] == REGISTRY["slack"].default_api_url
