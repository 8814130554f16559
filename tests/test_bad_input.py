"""Bad input at the door: every case raises at once with a message that names the problem (issue 15).

Each row is (id, how to provoke it given a scratch folder, the exception type, a regex the message
must match). The regexes name the offending key/value/file, not just "error".
"""

from __future__ import annotations

import json

import pytest
import torch
from _lm_helpers import make_tokenizer, synthetic_articles
from _numerics import TOLERANCE
from torch import nn

from flyweight.attention import make_attention
from flyweight.convert import convert
from flyweight.convert.checkpoint import load_structured, save_structured
from flyweight.data import load_tokenizer, make_corpus, tokenize_split
from flyweight.data import tokenizer as tokenizer_mod
from flyweight.linear import LowRankLinear, make_linear, validate_linear
from flyweight.models.gpt2 import build_gpt2

KINDS = {"dense": {}, "lowrank": {"rank": 4}, "monarch": {"nblocks": 4}, "ss1": {"compression": 4}}


def _layer(kind: str) -> nn.Module:
    return make_linear(kind, 128, 64, **KINDS[kind])


def _call_layer_int(kind):
    return lambda tmp: _layer(kind)(torch.ones(2, 128, dtype=torch.int64))


def _call_attention_int(name):
    def go(tmp):
        q = torch.ones(1, 2, 8, 16, dtype=torch.int32)
        return make_attention(name)(q, q, q)
    return go


def _meta_input(kind):
    return lambda tmp: _layer(kind)(torch.empty(2, 128, device="meta"))


def _saved_model(tmp):
    folder = tmp / "ckpt"
    save_structured(nn.Sequential(nn.Linear(4, 4)), folder)
    return folder


def _truncated_safetensors(tmp):
    folder = _saved_model(tmp)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    load_structured(folder, model=nn.Sequential(nn.Linear(4, 4)))


def _zero_byte_safetensors(tmp):
    folder = _saved_model(tmp)
    (folder / "model.safetensors").write_bytes(b"")
    load_structured(folder, model=nn.Sequential(nn.Linear(4, 4)))


def _non_json_config(tmp):
    folder = _saved_model(tmp)
    (folder / "config.json").write_text('{"architectures": [')
    load_structured(folder, model=nn.Sequential(nn.Linear(4, 4)))


def _tokenize_text_corpus(tmp, files: dict[str, bytes], **corpus_kwargs):
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    tok = load_tokenizer(str(make_tokenizer(tmp / "tok")))
    corpus = make_corpus("text", str(tmp / "corpus.txt"), **corpus_kwargs)
    for split in ("train", "val", "test"):
        tokenize_split(corpus, split, tok, tmp / "cache", progress=False)


def _lm(tmp, **groups):
    """check_lm_config of the tiny "lm" config with ``groups`` merged in: nothing is read or built."""
    from _lm_helpers import tiny_lm_cfg

    from flyweight.train.validate import check_lm_config

    cfg = tiny_lm_cfg(tmp / "corpus", tmp / "tok", tmp / "cache")
    for group, values in groups.items():
        cfg[group].update(values)
    check_lm_config(cfg)


def _short_val_split(tmp):
    """A val split of ~700 tokens under windows of 1024: it was skipped ("val": null, exit 0)."""
    from _lm_helpers import tiny_lm_cfg, write_wikitext

    from flyweight.train.lm import train_lm

    cfg = tiny_lm_cfg(write_wikitext(tmp / "wt", sizes=(40, 3, 3)), make_tokenizer(tmp / "tok"), tmp / "cache",
                      model={"n_positions": 1024}, data={"max_length": 1024, "global_batch_size": 2,
                                                         "micro_batch_size": 2})
    train_lm(cfg, tmp / "run")


TEXT = "\n\n".join(" ".join(p) for _, p in synthetic_articles(30)).encode()

CASES = [
    # silent wrong results: integer input was computed with the weights cast to int64
    *[(f"int-input-{k}", _call_layer_int(k), TypeError, r"floating-point.*torch\.int64") for k in KINDS],
    *[(f"int-input-attention-{n}", _call_attention_int(n), TypeError, r"q must be a floating-point.*torch\.int32")
      for n in ("local", "performer", "sblocal")],
    # Monarch's bmm returned uninitialised memory for a meta input on a CPU layer
    *[(f"meta-input-{k}", _meta_input(k), RuntimeError, r"meta device.*weights are on cpu") for k in KINDS],
    ("lowrank-rank-and-compression", lambda tmp: LowRankLinear(64, 64, rank=4, compression=2), ValueError,
     r"rank or compression, not both.*rank=4.*compression=2"),
    ("window-size-float-local", lambda tmp: make_attention("local", window_size=2.7), ValueError,
     r"window_size must be an integer.*2\.7"),
    ("window-size-float-sblocal", lambda tmp: make_attention("sblocal", window_size=2.7), ValueError,
     r"window_size must be an integer.*2\.7"),
    ("nb-features-float", lambda tmp: make_attention("performer", nb_features=12.5), ValueError,
     r"nb_features must be a positive integer.*12\.5"),
    # unclear errors
    ("misspelt-layer-kwarg", lambda tmp: make_linear("ss1", 128, 64, compresion=4), TypeError,
     r"'ss1' has no argument 'compresion' \(did you mean 'compression'\?\); valid arguments: compression, seed"),
    ("misspelt-convert-kwarg", lambda tmp: convert(nn.Sequential(nn.Linear(8, 8)), "monarch", targets="0",
                                                   nblock=2),
     ValueError, r"'monarch'\) has no setting 'nblock' \(did you mean 'nblocks'\?\)"),
    ("ss1-compression-3-validated-up-front", lambda tmp: validate_linear("ss1", 768, 768, compression=3),
     ValueError, r"compression must be a power of two.*got 3"),
    ("validate-unknown-kind", lambda tmp: validate_linear("ss2", 768, 768), ValueError, r"unknown linear kind 'ss2'"),
    ("gpt2-n-positions-0", lambda tmp: build_gpt2("tiny", n_positions=0, device="meta"), ValueError,
     r"n_positions must be a positive integer, got 0"),
    ("gpt2-vocab-size-0", lambda tmp: build_gpt2("tiny", vocab_size=0, device="meta"), ValueError,
     r"vocab_size must be a positive integer, got 0"),
    ("gpt2-n-layer-0", lambda tmp: build_gpt2("tiny", n_layer=0, device="meta"), ValueError,
     r"n_layer must be a positive integer, got 0"),
    ("gpt2-heads-do-not-divide", lambda tmp: build_gpt2("tiny", n_head=3, device="meta"), ValueError,
     r"n_embd=128 must be a multiple of n_head=3"),
    ("truncated-safetensors", _truncated_safetensors, ValueError, r"ckpt/model\.safetensors.*truncated"),
    ("zero-byte-safetensors", _zero_byte_safetensors, ValueError, r"ckpt/model\.safetensors.*truncated"),
    ("non-json-config", _non_json_config, ValueError, r"ckpt/config\.json is not valid JSON"),
    ("tokenizer-missing-dir", lambda tmp: load_tokenizer(str(tmp / "no" / "such" / "dir")), FileNotFoundError,
     r"data\.tokenizer=.*no/such/dir.*does not exist"),
    ("tokenizer-missing-relative-dir", lambda tmp: load_tokenizer("./no-such-tokenizer"), FileNotFoundError,
     r"no-such-tokenizer does not exist"),
    ("empty-corpus-file", lambda tmp: _tokenize_text_corpus(tmp, {"corpus.txt": b""}), ValueError,
     r"corpus\.txt hold\(s\) no text"),
    ("blank-corpus-file", lambda tmp: _tokenize_text_corpus(tmp, {"corpus.txt": b"\n \n\n\t\n"}), ValueError,
     r"corpus\.txt hold\(s\) no text"),
    ("val-fraction-0", lambda tmp: _tokenize_text_corpus(tmp, {"corpus.txt": TEXT}, val_fraction=0.0), ValueError,
     r"split 'val' of corpus 'text' has no tokens.*data\.val_fraction"),
    # the "lm" config at the door (train_lm / eval_lm run it before any data is read)
    ("lm-micro-batch-0", lambda tmp: _lm(tmp, data={"micro_batch_size": 0}), ValueError,
     r"data\.micro_batch_size=0: must be an integer >= 1 or auto; for example data\.micro_batch_size=8"),
    ("lm-max-steps-negative", lambda tmp: _lm(tmp, trainer={"max_steps": -1}), ValueError,
     r"trainer\.max_steps=-1: must be an integer >= 1 \(or null\); for example trainer\.max_steps=1000"),
    ("lm-max-length-over-n-positions", lambda tmp: _lm(tmp, data={"max_length": 128}), ValueError,
     r"data\.max_length=128: must be <= model\.n_positions=64 .*for example data\.max_length=64"),
    ("lm-n-layer-0", lambda tmp: _lm(tmp, model={"n_layer": 0}), ValueError, r"n_layer must be a positive integer, got 0"),
    ("lm-ss1-compression-3", lambda tmp: _lm(tmp, model={"kind": "ss1", "settings": {"compression": 3}}), ValueError,
     r"kind 'ss1' with settings \{'compression': 3\} cannot build .*compression must be a power of two"),
    ("lm-misspelt-layer-setting", lambda tmp: _lm(tmp, model={"kind": "ss1", "settings": {"compresion": 4}}),
     (TypeError, ValueError), r"compresion.*did you mean 'compression'"),
    ("lm-precision-unknown", lambda tmp: _lm(tmp, trainer={"precision": "fp16"}), ValueError,
     r"trainer\.precision='fp16': must be one of auto, .*16-mixed.*; for example trainer\.precision=bf16-mixed"),
    ("lm-resume-missing-file", lambda tmp: _lm(tmp, trainer={"resume": str(tmp / "no.ckpt")}), ValueError,
     r"trainer\.resume='.*no\.ckpt': must be auto .*never, or an existing \.ckpt file"),
    ("lm-global-batch-0", lambda tmp: _lm(tmp, data={"global_batch_size": 0}), ValueError,
     r"data\.global_batch_size=0: must be an integer >= 1"),
    ("lm-lr-0", lambda tmp: _lm(tmp, optim={"lr": 0}), ValueError, r"optim\.lr=0: must be a number > 0"),
    ("lm-val-split-shorter-than-a-window", _short_val_split, ValueError,
     r"the val split of data\.corpus=wikitext103 has \d+ tokens, fewer than one window of data\.max_length=1024"),
    ("non-utf8-corpus", lambda tmp: _tokenize_text_corpus(tmp, {"corpus.txt": TEXT + "caf\u00e9".encode("latin-1")}),
     ValueError, r"corpus\.txt is not UTF-8 text: byte 0xe9 at offset \d+"),
]


@pytest.mark.parametrize("make_error, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_problem(tmp_path, make_error, error, message):
    with pytest.raises(error, match=message):
        make_error(tmp_path)


def test_local_attention_of_an_empty_sequence_is_empty_like_full_attention():
    q = torch.randn(2, 3, 0, 8)
    full = make_attention("full")(q, q, q)
    for name in ("local", "performer", "sblocal"):
        out = make_attention(name, **({"window_size": 200} if name != "performer" else {}))(q, q, q)
        assert out.shape == full.shape == (2, 3, 0, 8) and out.dtype == full.dtype


def test_float_inputs_still_work_after_the_dtype_check():
    for kind in KINDS:
        layer = _layer(kind).double()
        x = torch.randn(3, 128, dtype=torch.float64)
        ref = x @ layer.to_dense().t() + layer.bias
        torch.testing.assert_close(layer(x), ref, **TOLERANCE[torch.float64].close())


def test_validate_linear_returns_the_structure_and_allocates_nothing():
    config = validate_linear("ss1", 768, 3072, compression=8, seed=7)
    assert config["compression"] == 8 and config["seed"] == 7
    assert config == make_linear("ss1", 768, 3072, compression=8, seed=7).settings()


def test_hub_tokenizer_without_network_fails_fast(monkeypatch):
    """No HF_HUB_OFFLINE, no network: one failed probe answers, the hub's minute of retries never starts."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in tokenizer_mod._PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    import transformers

    def must_not_download(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            raise AssertionError("the hub was contacted although the probe failed")
        raise OSError("not in the local cache")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", must_not_download)
    with pytest.raises(RuntimeError, match=r"(?s)127\.0\.0\.1:9 is not reachable.*data\.tokenizer=/path/to/folder"):
        load_tokenizer("hub:gpt2")


def test_hub_probe_reports_a_listening_endpoint(monkeypatch):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        for var in tokenizer_mod._PROXY_VARS:
            monkeypatch.delenv(var, raising=False)
        assert tokenizer_mod.hub_reachable(timeout=2)
    finally:
        server.close()


def test_non_utf8_wikitext_names_the_file(tmp_path):
    from _lm_helpers import write_wikitext

    folder = write_wikitext(tmp_path / "wt")
    (folder / "wiki.valid.raw").write_bytes(b" = T = \n \xff\xfe bad \n")
    corpus = make_corpus("wikitext2", folder)
    with pytest.raises(ValueError, match=r"wiki\.valid\.raw is not UTF-8 text: byte 0xff at offset 9"):
        corpus.documents("val")
    assert json.dumps(corpus.documents("train"))  # the other splits still load


def test_command_line_user_error_prints_the_message_not_a_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo / "src"))
    env.pop("FLYWEIGHT_TRACEBACK", None)
    cmd = [sys.executable, str(repo / "run.py"), "task=nope", f"hydra.run.dir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("flyweight: error: unknown task 'nope'; valid tasks:")
    assert "Traceback" not in out.stderr and "runner.py:" in out.stderr
    debug = subprocess.run(cmd, capture_output=True, text=True, env={**env, "FLYWEIGHT_TRACEBACK": "1"}, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_user_errors_reported_leaves_other_exceptions_alone():
    import io

    from flyweight.utils.errors import user_errors_reported

    stream = io.StringIO()
    with pytest.raises(SystemExit) as stop:
        with user_errors_reported(stream):
            raise FileNotFoundError("data.path: /x does not exist")
    assert stop.value.code == 2 and stream.getvalue().startswith("flyweight: error: data.path: /x does not exist")
    with pytest.raises(KeyError):  # a bug, not a user error: the traceback stays
        with user_errors_reported(stream):
            raise KeyError("n_tokens")


def test_build_gpt2_checks_layer_settings_before_building(monkeypatch):
    """compression=3 on an SS1 GPT-2 fails before the model (or any data) exists: the trainer can call
    build_gpt2(..., device="meta") as its check of the model config."""
    import transformers

    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before its layer settings were checked")

    monkeypatch.setattr(transformers, "GPT2LMHeadModel", must_not_build)
    with pytest.raises(ValueError, match=r"kind 'ss1' with settings \{'compression': 3\} cannot build mlp\.c_fc "
                                         r"\(768->3072, role mlp\): compression must be a power of two"):
        build_gpt2("small", kind="ss1", settings={"compression": 3}, device="meta")


def test_train_lm_checks_the_model_before_reading_any_data(tmp_path):
    from _lm_helpers import tiny_lm_cfg, write_wikitext

    from flyweight.train.lm import train_lm

    cfg = tiny_lm_cfg(write_wikitext(tmp_path / "wt"), make_tokenizer(tmp_path / "tok"), tmp_path / "cache",
                      kind="ss1", settings={"compression": 3})
    with pytest.raises(ValueError, match="compression must be a power of two"):
        train_lm(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # nothing tokenized or written


def test_lowrank_rank_replaces_the_default_compression():
    model = build_gpt2("tiny", kind="lowrank", settings={"rank": 4}, device="meta")
    assert model.transformer.h[0].mlp.c_fc.rank == 4
