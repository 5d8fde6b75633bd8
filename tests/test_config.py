"""Config composition with Hydra's compose for every group option, and early, named errors."""
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from bsb_hydra.config import ConfigError, validate
from tests.conftest import CONF

GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in
          ("model", "data", "quant", "backend", "device", "train")}


def _resolvable(cfg):
    # paths.root interpolates hydra:runtime.cwd, absent outside a Hydra run
    cfg.paths.root = "/tmp/project"
    return cfg


# Options whose keys have no default (a user's file): the values they need to compose.
REQUIRED = {("model", "onnx"): ["model.path=net.onnx"], ("model", "hf"): ["model.path=/tmp/hf_folder"],
            ("model", "keras"): ["model.path=net.keras"], ("model", "tflite"): ["model.path=net.tflite"],
            ("data", "hf_default"): ["model=hf", "model.path=/tmp/hf_folder"],
            ("model", "torch"): ["model.target=pkg.nets.Net", "model.input_shape=[3,32,32]"],
            ("data", "npz"): ["data.path=arrays.npz"], ("data", "text_csv"): ["data.path=texts.csv"],
            ("data", "coco"): ["data.annotations=instances.json"]}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes_and_validates(compose_cfg, group, option):
    given = [f"{group}={option}", *REQUIRED.get((group, option), [])]
    cfg = compose_cfg(given)
    if group == "data" and "tokenizer" in cfg.data and not any(g.startswith("model=") for g in given):
        # text data: with a model that reads it
        model = "transformer_tiny" if cfg.data.tokenizer == "minilm" else "lstm"
        cfg = compose_cfg([*given, f"model={model}"])
    obj = validate(_resolvable(cfg))
    assert getattr(obj, group) is not None


def test_each_model_names_its_default_data(compose_cfg):
    for m in GROUPS["model"]:
        cfg = compose_cfg([f"model={m}"])
        assert cfg.data.name == cfg.model.default_data, m


def test_static_quant_options_are_typed(compose_cfg):
    cfg = _resolvable(compose_cfg(["quant=static", "quant.granularity=per_tensor", "quant.method=entropy"]))
    q = validate(cfg).quant
    assert q.granularity.value == "per_tensor" and q.method.value == "entropy" and q.samples == 256


def test_unknown_group_option_names_it_and_the_valid_ones(compose_cfg):
    with pytest.raises(MissingConfigException) as e:
        compose_cfg(["model=cnnn"])
    msg = str(e.value)
    assert "cnnn" in msg and "cnn" in msg and "mobilenet" in msg


@pytest.mark.parametrize("override,needle", [
    ("quant.granularity=per_row", "per_row"),
    ("train.epochs=many", "many"),
    ("benchmark.min_runs=1.5x", "1.5x"),
])
def test_wrong_typed_value_is_named(compose_cfg, override, needle):
    over = ["quant=static", override] if override.startswith("quant") else [override]
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(over)
    assert needle in str(e.value) or needle in str(e.value.__cause__)


def test_invalid_enum_lists_valid_values(compose_cfg):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["quant=static", "quant.granularity=per_row"])
    text = str(e.value.__cause__)
    assert "per_channel" in text and "per_tensor" in text


def test_unknown_key_is_refused(compose_cfg):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["model.depth=3"])
    assert "depth" in str(e.value)


@pytest.mark.parametrize("override,key", [
    ("train.epochs=0", "train.epochs"),
    ("train.batch_size=-4", "train.batch_size"),
    ("benchmark.batch_sizes=[]", "benchmark.batch_sizes"),
    ("benchmark.batch_sizes=[1,0]", "benchmark.batch_sizes[1]"),
    ("device.threads=0", "device.threads"),
    ("data.limit_test=0", "data.limit_test"),
    ("device.torch_engine=cuda", "device.torch_engine"),
    # NaN passed every "value <= 0" check (issue 31): a NaN timeout hung the sweep on a hung worker
    ("benchmark.timeout_s=nan", "benchmark.timeout_s"),
    ("train.lr=nan", "train.lr"),
    ("benchmark.min_duration_s=inf", "benchmark.min_duration_s"),
    ("benchmark.max_duration_s=-inf", "benchmark.max_duration_s"),
    ("mlflow.heartbeat_s=nan", "mlflow.heartbeat_s"),
    ("mlflow.stale_after_s=10", "mlflow.stale_after_s"),
])
def test_out_of_range_values_fail_validation_naming_the_key(compose_cfg, override, key):
    cfg = _resolvable(compose_cfg([override]))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert key in str(e.value)


def test_static_samples_must_be_positive(compose_cfg):
    cfg = _resolvable(compose_cfg(["quant=static", "quant.samples=0"]))
    with pytest.raises(ConfigError, match="quant.samples"):
        validate(cfg)


def test_default_grid_experiment_sweeps_the_foundation(compose_cfg):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=default_grid"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params == {"model": "mlp,cnn,mobilenet", "quant": "fp32,fp16,dynamic,static",
                      "backend": "pytorch,onnxruntime"}


@pytest.mark.parametrize("override,key", [
    ("quant.epochs=0", "quant.epochs"),
    ("quant.lr=0", "quant.lr"),
    ("quant.batch_size=-1", "quant.batch_size"),
    ("quant.limit_samples=0", "quant.limit_samples"),
])
def test_qat_values_fail_validation_naming_the_key(compose_cfg, override, key):
    cfg = _resolvable(compose_cfg(["quant=qat", override]))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert key in str(e.value)


def test_qat_fine_tunes_on_as_many_samples_as_training(compose_cfg):
    cfg = _resolvable(compose_cfg(["quant=qat", "train=smoke"]))
    assert validate(cfg).quant.limit_samples == 512
    cfg = _resolvable(compose_cfg(["quant=qat"]))
    assert validate(cfg).quant.limit_samples is None


def test_tflite_int8_io_needs_a_full_integer_scheme(compose_cfg):
    from bsb_hydra.backends import get_backend

    pytest.importorskip("ai_edge_litert")
    backend = get_backend("tflite")
    cfg = validate(_resolvable(compose_cfg(["backend=tflite", "quant=dynamic", "backend.int8_io=true"])))
    assert "backend.int8_io=true" in backend.unsupported_reason(cfg)
    cfg = validate(_resolvable(compose_cfg(["backend=tflite", "quant=static", "quant.method=entropy"])))
    assert "quant.method=entropy" in backend.unsupported_reason(cfg)
    cfg = validate(_resolvable(compose_cfg(["backend=tflite", "quant=static", "backend.int8_io=true"])))
    assert backend.unsupported_reason(cfg) is None


@pytest.mark.parametrize("overrides,needle", [
    (["model=lstm", "data=fashion_mnist"], "model=lstm reads text data, data=fashion_mnist is not text data"),
    (["model=cnn", "data=rt_snippets"], "model=cnn reads image data, data=rt_snippets is not image data"),
    (["model=transformer", "data.tokenizer=word"], "model=transformer needs data.tokenizer=minilm"),
    (["model=lstm", "data.tokenizer=bpe"], "data.tokenizer='bpe' is not allowed: use one of word, minilm"),
    (["model=transformer_tiny", "model.heads=3"], "model.heads=3 is not allowed: it must divide model.hidden=64"),
])
def test_model_and_data_must_fit_each_other(compose_cfg, overrides, needle):
    cfg = _resolvable(compose_cfg(overrides))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert needle in str(e.value)


def test_transformer_defaults_read_minilm_tokens(compose_cfg):
    for model, seq_len in (("transformer", 128), ("transformer_tiny", 64)):
        c = validate(_resolvable(compose_cfg([f"model={model}"])))
        assert c.data.tokenizer == "minilm" and c.data.seq_len == seq_len and c.data.vocab_size == 30522
    tiny = validate(_resolvable(compose_cfg(["model=transformer_tiny", "data.seq_len=32"]))).model
    assert tiny.vocab_size == 30522 and tiny.max_positions == 32


@pytest.mark.parametrize("args, message", [
    (["quant=dynamic", "quant.analyze=true"],
     "quant.analyze is not a key of quant=dynamic: it belongs to quant=static, quant=auto"),
    (["model=cnn", "model.hidden=[3]"], "model.hidden is not a key of model=cnn: it belongs to model=lstm, model=mlp, model=transformer_tiny"),
])
def test_a_key_of_another_option_is_named_with_the_options_that_have_it(args, message):
    """Hydra alone answers with "Key 'analyze' not in 'DynamicQuantConfig'" and a hint to append
    it with +, which would add a key the scheme ignores."""
    from bsb_hydra.config import check_group_overrides

    with pytest.raises(ConfigError) as e:
        check_group_overrides(args)
    assert str(e.value).startswith(message)
    # the option that has the key, a sweep of options (the sweeper drops the key where it does not
    # apply) and a key with no option chosen (Hydra's own check) pass here
    for ok in (["quant=static", "quant.analyze=true"], ["quant=fp32,fake_quant", "quant.bits=2"],
               ["quant.analyze=true"]):
        check_group_overrides(ok)


@pytest.mark.parametrize("backend,value,needle", [
    ("pytorch", "true", "quant.convolutions=true on pytorch: torchao's Int8DynamicActivationInt8WeightConfig "
                        "quantizes Linear layers only"),
    ("pytorch backend.flow=fx", "true", "quant.convolutions=true on pytorch: torch.ao's quantize_dynamic quantizes "
                                        "Linear, LSTM"),
    ("tflite", "false", "quant.convolutions=false on tflite (keras_twin): the converter's dynamic-range mode quantizes"),
])
def test_dynamic_convolutions_a_backend_cannot_do(compose_cfg, backend, value, needle):
    from bsb_hydra.backends import get_backend

    backend, *extra = backend.split()
    if backend == "tflite":
        pytest.importorskip("ai_edge_litert")
    cfg = validate(_resolvable(compose_cfg([f"backend={backend}", *extra, "quant=dynamic",
                                            f"quant.convolutions={value}"])))
    assert needle in (get_backend(backend).unsupported_reason(cfg) or "")
    cfg = validate(_resolvable(compose_cfg([f"backend={backend}", *extra, "quant=dynamic"])))  # null: the backend's choice
    assert get_backend(backend).unsupported_reason(cfg) is None


def test_xnnpack_latest_features_needs_xnnpack(compose_cfg):
    with pytest.raises(ConfigError) as e:
        validate(_resolvable(compose_cfg(["backend=tflite", "backend.xnnpack=false",
                                          "backend.xnnpack_latest_features=true"])))
    assert "backend.xnnpack_latest_features=true is not allowed with backend.xnnpack=false" in str(e.value)


def test_pytorch_export_names_the_bad_value_and_aoti_is_float_only_under_fx(compose_cfg):
    """backend.export=aoti: every scheme under backend.flow=pt2e (its int8 cells are AOTInductor
    packages whatever backend.export says), the float ones only under backend.flow=fx."""
    from bsb_hydra.backends import get_backend

    with pytest.raises(ConfigError) as e:
        validate(_resolvable(compose_cfg(["backend=pytorch", "backend.export=onnx"])))
    assert "backend.export='onnx' is not allowed: use one of torchscript, aoti" in str(e.value)
    backend = get_backend("pytorch")
    for scheme in ("fp32", "fp16", "dynamic", "static", "qat"):
        cfg = validate(_resolvable(compose_cfg(["backend=pytorch", f"quant={scheme}", "backend.export=aoti"])))
        assert backend.unsupported_reason(cfg) is None, scheme
    for scheme in ("dynamic", "static", "qat"):
        cfg = validate(_resolvable(compose_cfg(["backend=pytorch", f"quant={scheme}", "backend.export=aoti",
                                                "backend.flow=fx"])))
        assert f"backend.export=aoti with quant={scheme}: under backend.flow=fx" in (backend.unsupported_reason(cfg) or "")


def test_snapshot_conf_copies_conf_for_a_multirun_only(tmp_path):
    from bsb_hydra.config import snapshot_conf

    conf = tmp_path / "conf"
    (conf / "quant").mkdir(parents=True)
    (conf / "quant" / "static.yaml").write_text("samples: 256\n")
    argv = snapshot_conf(["-m", "quant=static"], conf)
    assert argv[1:] == ["-m", "quant=static"] and argv[0].startswith("--config-path=")
    snap = Path(argv[0].split("=", 1)[1])
    (conf / "quant" / "static.yaml").write_text("samples: 7\n")  # an edit after the sweep started
    assert (snap / "quant" / "static.yaml").read_text() == "samples: 256\n"
    assert snapshot_conf(["quant=static"], conf) == ["quant=static"]  # a single run composes once
    mine = ["-m", "--config-dir=/elsewhere", "quant=static"]
    assert snapshot_conf(mine, conf) == mine


def test_the_config_reference_is_current_and_lists_every_key():
    """docs/config.md is what `make config-docs` writes from the schemas now (edit a schema, run it), and
    every key of every group option and top-level section is in it with its default."""
    import dataclasses

    from bsb_hydra.config import reference
    from bsb_hydra.config.run import Config
    from bsb_hydra.config.store import schemas

    text = reference.render()
    assert reference.DOC.read_text() == text, "docs/config.md is not current: run `make config-docs`"
    assert reference.main(["--check"]) == 0
    for group in reference.GROUPS:
        for name, cls in schemas(group).items():
            section = text.split(f"### `{group}={name}` (`{cls.__name__}`)", 1)
            assert len(section) == 2, (group, name)
    sections = dict(reference._sections(Config))
    assert {"benchmark", "mlflow", "paths", "peak"} <= set(sections)
    for name, cls in sections.items():
        part = text.split(f"## `{name}` (`{cls.__name__}`)", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in part, (name, f.name)
    undocumented = [line for line in text.splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undocumented, f"keys without a comment in their schema: {undocumented[:5]}"
    pt = text.split("### `backend=pytorch`", 1)[1].split("\n### ", 1)[0]
    assert "| `flow` | pt2e | str | How static, qat, dynamic and auto are built." in pt  # the comment above it


# ------------------------------------------------------------------------------------------- docs
ROOT = CONF.parent


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    import re

    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short_and_every_docs_link_resolves():
    """The README a newcomer reads in ten minutes (at most 250 lines: the map, the two commands, one
    example per use, the support matrix), and every relative link of it and of docs/ to a file that
    exists and, with an anchor, to a heading of that file."""
    import re

    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    pages = [readme, *sorted((ROOT / "docs").rglob("*.md"))]
    bad = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                heads = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.M)}
                if anchor not in heads:
                    bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)
