"""Text data (tokenizer, vocabulary, loaders) and the LSTM through every backend in a smoke sweep."""
import numpy as np
import pytest

from bsb_hydra.config import TextDataConfig
from bsb_hydra.data import DataNotFoundError, load_dataset
from bsb_hydra.data.text import PAD, UNK, Vocab, tokenize
from tests.conftest import SMOKE, run_bsb, runs_of


def test_tokenize_words_apostrophes_and_punctuation():
    assert tokenize("A gorgeous, witty film's DON'T!") == ["a", "gorgeous", ",", "witty", "film's", "don't", "!"]


def test_vocab_round_trip_padding_truncation_and_unknowns():
    train = ["the film is good", "the film is bad", "good good acting"]
    v = Vocab.build(train, size=6)
    # most frequent first (good 3, film 2, is 2, the 2: ties alphabetical), then cut at size - 2
    assert v.itos == ["<pad>", "<unk>", "good", "film", "is", "the"]
    ids = v.encode("the film is good", seq_len=6)
    assert ids.dtype == np.int64 and list(ids[:2]) == [PAD, PAD]  # left padding
    assert v.decode(ids) == ["the", "film", "is", "good"]
    assert v.decode(v.encode("the acting is superb", 8)) == ["the", "<unk>", "is", "<unk>"]
    assert list(v.encode("good film is the good", 3)) == [2, 3, 4]  # truncated to the first tokens
    assert v.encode("", 4).tolist() == [PAD] * 4 and UNK == 1


def test_rt_snippets_labels_split_and_vocabulary():
    cfg = TextDataConfig(name="rt_snippets", vocab_size=5000, seq_len=32)
    ds = load_dataset(cfg, seed=0)
    assert len(ds.y_train) + len(ds.y_test) == 10605 - 37  # zero scores dropped
    assert ds.x_train.dtype == np.int64 and ds.x_train.shape[1] == 32
    assert abs(ds.y_test.mean() - ds.y_train.mean()) < 0.01  # stratified
    assert len(ds.vocab.itos) == 5000 and ds.x_train.max() < 5000
    assert len(ds.texts_test) == len(ds.y_test)
    again = load_dataset(cfg, seed=0)
    assert np.array_equal(again.x_test, ds.x_test)
    other = load_dataset(cfg, seed=1)
    assert not np.array_equal(other.y_test, ds.y_test)
    # the vocabulary comes from the training split only
    train_words = {t for i in range(len(ds.y_train)) for t in ds.vocab.decode(ds.x_train[i])}
    assert set(ds.vocab.itos[2:]) <= train_words | {"<unk>"}


def test_limit_test_keeps_texts_aligned():
    cfg = TextDataConfig(name="rt_snippets", vocab_size=5000, seq_len=16, limit_test=50)
    ds = load_dataset(cfg, seed=0)
    assert len(ds.texts_test) == 50
    for text, ids in zip(ds.texts_test, ds.x_test):
        assert ds.vocab.encode(text, 16).tolist() == ids.tolist()


def _write_imdb(root):
    for split in ("train", "test"):
        for label, words in (("pos", "great wonderful fun"), ("neg", "boring awful mess")):
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                (folder / f"{i}_7.txt").write_text(f"A {words} movie.<br /><br />Number {i}.")
    return root / "aclImdb"


def test_imdb_loader_on_folder_layout(tmp_path):
    root = _write_imdb(tmp_path)
    ds = load_dataset(TextDataConfig(name="imdb", root=str(root), vocab_size=50, seq_len=12), seed=0)
    assert len(ds.y_train) == 8 and len(ds.y_test) == 8 and ds.y_train.sum() == 4
    assert "<br" not in " ".join(ds.vocab.itos) and "wonderful" in ds.vocab.itos


def test_imdb_missing_folder_names_the_path(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"train/neg.*data.root"):
        load_dataset(TextDataConfig(name="imdb", root=str(tmp_path)), seed=0)


def test_sst2_loader_on_glue_tsv(tmp_path):
    rows = "sentence\tlabel\n" + "".join(f"a {'fine' if i % 2 else 'dull'} film {i}\t{i % 2}\n" for i in range(10))
    (tmp_path / "train.tsv").write_text(rows)
    (tmp_path / "dev.tsv").write_text(rows)
    ds = load_dataset(TextDataConfig(name="sst2", root=str(tmp_path), vocab_size=30, seq_len=8), seed=0)
    assert len(ds.y_train) == 10 and ds.y_test.tolist() == [i % 2 for i in range(10)]
    (tmp_path / "dev.tsv").unlink()
    with pytest.raises(DataNotFoundError, match="dev.tsv"):
        load_dataset(TextDataConfig(name="sst2", root=str(tmp_path)), seed=0)


@pytest.fixture(scope="module")
def lstm_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lstm")
    run_bsb(["-m", "model=lstm", "quant=fp32,dynamic,static", "backend=pytorch,onnxruntime,tflite",
             "data.vocab_size=5000", "data.seq_len=32", *SMOKE], tmp)
    client, runs = runs_of(tmp)
    return tmp, client, {(r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}


def test_lstm_cells_ok_or_unsupported_with_reason(lstm_sweep):
    _, _, cells = lstm_sweep
    assert len(cells) == 9
    for key, r in cells.items():
        assert r.data.tags["status"] in ("ok", "unsupported"), (key, r.data.tags.get("reason"))
        if r.data.tags["status"] == "unsupported":
            assert "lstm" in r.data.tags["reason"]
        assert r.data.tags["seq_len"] == "32"
    for backend in ("pytorch", "onnxruntime", "tflite"):
        assert cells[("fp32", backend)].data.tags["status"] == "ok"
        assert cells[("dynamic", backend)].data.tags["status"] == "ok"
    assert cells[("static", "tflite")].data.tags["status"] == "ok"  # full-integer, unrolled LSTM


def test_lstm_dynamic_int8_at_most_40_percent(lstm_sweep):
    _, _, cells = lstm_sweep
    for backend in ("pytorch", "onnxruntime", "tflite"):
        m = cells[("dynamic", backend)].data.metrics
        assert m["size_ratio"] <= 0.40, backend
        assert m["top1_agreement"] >= 0.95, backend
    assert "DynamicQuantizeLSTM" in cells[("dynamic", "onnxruntime")].data.tags["build.ops"]


def test_lstm_fp32_onnxruntime_and_tflite_agree_with_pytorch(lstm_sweep):
    _, _, cells = lstm_sweep
    for backend in ("onnxruntime", "tflite"):
        m = cells[("fp32", backend)].data.metrics
        assert m["fp32_vs_pytorch_agreement"] >= 0.999 and m["fp32_vs_pytorch_max_abs_logit_diff"] < 1e-3, backend
    for backend in ("pytorch", "onnxruntime", "tflite"):  # token ids on every backend
        assert cells[("fp32", backend)].data.tags["input_dtype"] == "int64", backend
