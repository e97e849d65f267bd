"""The integration contract, checked for every registered integration (one registry line each)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import integrations
from integrations import REGISTRY
from integrations.base import AuthError, ConfigModel, Integration, ParamsModel, PermanentError, RetryableError
from service import sandbox
from service.config import Settings

ROOT = Path(integrations.__file__).parent
SANDBOX = Path(sandbox.__file__).parent
FOLDERS = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def test_every_integration_folder_with_actions_is_registered():
    """A folder that defines an Integration subclass appears in REGISTRY under its folder name."""
    assert set(REGISTRY) <= set(FOLDERS)
    for folder in FOLDERS:
        module = __import__(f"integrations.{folder}", fromlist=["*"])
        classes = [v for v in vars(module).values()
                   if isinstance(v, type) and issubclass(v, Integration) and v is not Integration]
        assert classes, f"integrations/{folder} exports no Integration subclass"
        assert all(cls.key == folder and REGISTRY[folder] is cls for cls in classes), folder


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_contract_shape(key):
    """Key, name, Config, actions with params models, a vendor URL setting, integration.py, a stand-in and fixtures."""
    cls = REGISTRY[key]
    assert cls.name and issubclass(cls.Config, ConfigModel)
    assert cls.actions, f"{key} offers no action"
    for action, model in cls.actions.items():
        assert issubclass(model, ParamsModel) and callable(getattr(cls, action)), action
    assert cls.default_api_url, f"{key}: no default_api_url"
    assert f"{key}_api_url" in Settings.model_fields, f"{key}: no setting {key}_api_url"
    assert (ROOT / key / "integration.py").exists(), f"{key}: the Integration lives in integration.py"
    assert (SANDBOX / "standins" / f"{key}.py").exists() or key == "virtualpbx", f"{key} has no stand-in"
    assert any((ROOT / key / "fixtures").glob("*.json")) or key == "virtualpbx", f"{key} has no fixtures"
    assert cls.check is not Integration.check, f"{key}: no connection check (the console's Test button)"


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_secret_fields_are_secret_str(key):
    """Fields that hold credentials are SecretStr, so repr() and model_dump() never show them."""
    for name, field in REGISTRY[key].Config.model_fields.items():
        if any(word in name for word in ("token", "password", "api_key", "secret", "credentials", "webhook_url")):
            assert "SecretStr" in str(field.annotation), f"{key}.{name} must be SecretStr"


@pytest.mark.parametrize("cls", [RetryableError, PermanentError, AuthError])
def test_errors_pickle_with_their_fields(cls):
    """The errors that reach Celery survive pickling with message, status, retry_after and code."""
    error = cls("boom", status=429, retry_after=2.5, code="x")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls and (clone.message, clone.status, clone.retry_after, clone.code) == (
        "boom", 429, 2.5, "x")


def test_unknown_action_and_bad_params_are_permanent():
    """run() refuses an action the integration lacks and params its model rejects, permanently."""
    from integrations.base import ActionContext

    slack = REGISTRY["slack"](REGISTRY["slack"].Config.model_validate({"bot_token": "xoxb-1-2-abc"}))
    ctx = ActionContext(account_id="a", idempotency_key="k")
    with pytest.raises(PermanentError, match="no action"):
        slack.run("delete_everything", {}, ctx)
    with pytest.raises(PermanentError, match="invalid parameters"):
        slack.run("post_message", {"channel": "C1", "text": "hi", "surprise": 1}, ctx)


def test_scrub_removes_credentials_from_text():
    """scrub() masks given secrets and credential-shaped substrings."""
    from integrations.base import scrub

    text = ("GET https://api.trello.com/1/cards?key=abcd1234&token=SECRETTOKEN failed; Authorization: Bearer "
            "ya29.tok xoxb-123-456-abcdef https://hooks.slack.com/services/T1/B2/xyz")
    out = scrub(text, ["mysecretvalue"])
    for leaked in ("abcd1234", "SECRETTOKEN", "ya29.tok", "xoxb-123-456-abcdef", "T1/B2/xyz"):
        assert leaked not in out
    assert scrub("value mysecretvalue here", ["mysecretvalue"]) == "value *** here"
