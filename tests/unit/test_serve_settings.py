"""Server settings: flags win over KAON_* variables, which win over defaults; bad ones named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kaon_kernels.eventloop import LoopUnavailableError, loop_factory
from kaon_kernels.serve.settings import Settings, SettingsError, artifact_name, parse_settings


def test_defaults_need_only_the_model_dir() -> None:
    assert parse_settings(["--model-dir", "m"], {}) == Settings(model_dir=Path("m"))


def test_the_environment_sets_what_the_flags_leave_out() -> None:
    env = {
        "KAON_MODEL_DIR": "/models/a",
        "KAON_MODEL_NAME": "digits",
        "KAON_SERVE_PORT": "9000",
        "KAON_SERVE_MAX_BATCH_SIZE": "64",
        "KAON_SERVE_MAX_LATENCY_MS": "2.5",
        "KAON_SERVE_THREADS": "4",
    }
    got = parse_settings(["--max-batch-size", "8", "--name", "other"], env)
    assert got.model_dir == Path("/models/a")
    assert (got.name, got.port, got.max_batch_size, got.max_latency_ms, got.threads) == (
        "other",
        9000,
        8,
        2.5,
        4,
    )


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        ([], {}, "--model-dir (or KAON_MODEL_DIR) is required"),
        (["--model-dir", "m", "--port", "http"], {}, "--port: 'http' is not an integer"),
        (["--model-dir", "m"], {"KAON_SERVE_MAX_BATCH_SIZE": "0"}, "KAON_SERVE_MAX_BATCH_SIZE: 0"),
        (["--model-dir", "m", "--max-latency-ms", "nan"], {}, "--max-latency-ms: nan is outside"),
        (["--model-dir", "m", "--max-payload-bytes", "10"], {}, "--max-payload-bytes"),
        (["--model-dir", "m", "--loop", "trio"], {}, "--loop: 'trio' is not one of auto, uvloop"),
        (["--model-dir", "m"], {"KAON_SERVE_LOOP": "x"}, "KAON_SERVE_LOOP: 'x' is not one of"),
    ],
)
def test_bad_settings_name_the_flag_or_variable(
    argv: list[str], env: dict[str, str], words: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(argv, env)
    assert words in str(caught.value)


def test_the_served_name_comes_from_the_artifact(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not a kaon model artifact"):
        artifact_name(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"name": "digits", "family": "cnn"}))
    assert artifact_name(tmp_path) == "digits"


def test_a_model_uri_comes_from_the_flag_or_the_environment() -> None:
    uri = "s3://kaon/jobs/team/digits/u1/attempt-0/model"
    assert parse_settings(["--model-dir", "m"], {"KAON_MODEL_URI": uri}).model_uri == uri
    flag = parse_settings(["--model-dir", "m", "--model-uri", "s3://b/p"], {"KAON_MODEL_URI": uri})
    assert flag.model_uri == "s3://b/p"
    assert parse_settings(["--model-dir", "m"], {"KAON_MODEL_URI": ""}).model_uri is None
    with pytest.raises(SettingsError, match="KAON_MODEL_URI: 'pvc://models/a' is not an s3://"):
        parse_settings(["--model-dir", "m"], {"KAON_MODEL_URI": "pvc://models/a"})


def test_the_request_log_is_off_unless_given_a_uri_and_a_rate_above_zero() -> None:
    assert not parse_settings(["--model-dir", "m"], {}).logs_requests
    uri = "s3://audit/kaon/requests"
    on = parse_settings(["--model-dir", "m"], {"KAON_REQUEST_LOG_URI": uri})
    assert on.logs_requests and (on.request_log_uri, on.request_log_sample_rate) == (uri, 0.01)
    flags = ["--model-dir", "m", "--request-log-uri", "s3://b", "--request-log-sample-rate", "1"]
    got = parse_settings(flags, {"KAON_REQUEST_LOG_URI": uri})
    assert (got.request_log_uri, got.request_log_sample_rate) == ("s3://b", 1.0)
    zero = {"KAON_REQUEST_LOG_URI": uri, "KAON_REQUEST_LOG_SAMPLE_RATE": "0"}
    assert not parse_settings(["--model-dir", "m"], zero).logs_requests


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--request-log-uri", "gs://b/p"], {}, "--request-log-uri: 'gs://b/p' is not an s3://"),
        (
            [],
            {"KAON_REQUEST_LOG_URI": "s3:///p"},
            "KAON_REQUEST_LOG_URI: 's3:///p' is not an s3://",
        ),
        (
            ["--request-log-sample-rate", "1.5"],
            {},
            "--request-log-sample-rate: 1.5 is outside 0..1",
        ),
        (
            [],
            {"KAON_REQUEST_LOG_SAMPLE_RATE": "-0.1"},
            "KAON_REQUEST_LOG_SAMPLE_RATE: -0.1 is outside",
        ),
        (
            ["--request-log-sample-rate", "1%"],
            {},
            "--request-log-sample-rate: '1%' is not a number",
        ),
    ],
)
def test_bad_request_log_settings_name_the_flag_or_variable(
    argv: list[str], env: dict[str, str], words: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(["--model-dir", "m", *argv], env)
    assert words in str(caught.value)


def test_tls_and_auth_come_from_the_flags_or_the_environment(tmp_path: Path) -> None:
    cert, key, tokens = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "tokens"
    cert.write_text("c")
    key.write_text("k")
    tokens.mkdir()
    off = parse_settings(["--model-dir", "m"], {})
    assert not off.tls and not off.auth
    env = {
        "KAON_TLS_CERT_FILE": str(cert),
        "KAON_TLS_KEY_FILE": str(key),
        "KAON_AUTH_AUDIENCE": "digits.team",
    }
    on = parse_settings(["--model-dir", "m", "--auth-tokens-dir", str(tokens)], env)
    assert on.tls and on.auth
    assert (on.tls_cert_file, on.tls_key_file, on.auth_audience, on.auth_tokens_dir) == (
        cert,
        key,
        "digits.team",
        tokens,
    )
    assert parse_settings(["--model-dir", "m", "--auth-audience", "a"], {}).auth


def test_bad_tls_and_auth_settings_name_the_flag_or_variable(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("c")
    key.write_text("k")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["--tls-cert-file", str(cert)], {}, "--tls-cert-file needs --tls-key-file"),
        ([], {"KAON_TLS_CERT_FILE": str(cert)}, "KAON_TLS_CERT_FILE needs --tls-key-file"),
        ([], {"KAON_TLS_KEY_FILE": str(key)}, "KAON_TLS_KEY_FILE needs --tls-cert-file"),
        (
            ["--tls-cert-file", str(tmp_path / "nope.crt"), "--tls-key-file", str(key)],
            {},
            f"--tls-cert-file: '{tmp_path / 'nope.crt'}' is not a file",
        ),
        (
            ["--tls-cert-file", str(cert)],
            {"KAON_TLS_KEY_FILE": str(tmp_path)},
            f"KAON_TLS_KEY_FILE: '{tmp_path}' is not a file",
        ),
        (
            ["--auth-tokens-dir", str(cert)],
            {},
            f"--auth-tokens-dir: '{cert}' is not a directory",
        ),
        (
            [],
            {"KAON_AUTH_TOKENS_DIR": str(tmp_path / "none")},
            "KAON_AUTH_TOKENS_DIR: ",
        ),
    ]
    for argv, env, words in cases:
        with pytest.raises(SettingsError) as caught:
            parse_settings(["--model-dir", "m", *argv], env)
        assert words in str(caught.value), (argv, env)


def test_the_event_loop_is_uvloop_where_installed_unless_asyncio_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_settings(["--model-dir", "m"], {}).loop == "auto"
    assert parse_settings(["--model-dir", "m"], {"KAON_SERVE_LOOP": "asyncio"}).loop == "asyncio"
    assert loop_factory("auto")[0] == "uvloop"  # a runtime dependency
    name, new_loop = loop_factory("asyncio")
    loop = new_loop()
    try:
        assert name == "asyncio" and type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert loop_factory("auto")[0] == "asyncio"
    with pytest.raises(LoopUnavailableError, match="uvloop is not installed"):
        loop_factory("uvloop")
    with pytest.raises(ValueError, match="'trio'"):
        loop_factory("trio")


def test_the_server_refuses_to_start_on_uvloop_by_name_where_it_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kaon_kernels.serve.__main__ import EXIT_BAD_INPUT, main  # noqa: PLC0415

    (tmp_path / "model.pt").write_bytes(b"")  # never loaded: the loop is refused first
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert main(["--model-dir", str(tmp_path), "--name", "m", "--loop", "uvloop"]) == EXIT_BAD_INPUT
    assert "--loop uvloop: uvloop is not installed" in capsys.readouterr().err
