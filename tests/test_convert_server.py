"""bsb_hydra/backends/tflite/convert_server.py: one converter process serves a sweep process's requests; a
failed, crashed or hung request fails alone, with its output in its convert.log."""
import json
import os
import sys
import textwrap

import pytest

from bsb_hydra.backends.tflite import convert_server

FAKE = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    def main(path):
        req = json.loads(Path(path).read_text())
        print("converting", req["what"], "in", os.getpid(), flush=True)
        os.write(2, b"native stderr line\\n")  # as TensorFlow's C++ logging writes
        if req["what"] == "raise":
            raise ValueError("bad layer conv9")
        if req["what"] == "exit":
            raise SystemExit("tflite_convert: unknown scheme 'int3'")
        if req["what"] == "crash":
            os._exit(7)
        if req["what"] == "sigkill":  # as the OOM killer ends it, after TensorFlow's last log line
            os.write(2, b"I0000 00:00:1733 cpu_feature_guard.cc:210] This TensorFlow binary is optimized\\n")
            import signal
            os.kill(os.getpid(), signal.SIGKILL)
        if req["what"] == "hang":
            import time
            time.sleep(60)
        Path(req["out"]).write_text(str(os.getpid()))

    if __name__ == "__main__":
        if sys.argv[1] == "--serve":
            from bsb_hydra.backends.tflite.convert_server import serve
            serve(main)
        else:
            main(sys.argv[1])
''')


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "fake_converter.py").write_text(FAKE)
    from tests.conftest import ROOT

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    yield env
    convert_server.stop_all()


def _request(tmp_path, name, what):
    work = tmp_path / name
    work.mkdir()
    (work / "request.json").write_text(json.dumps({"what": what, "out": str(work / "out.txt")}))
    return work


def test_one_process_serves_every_request_and_each_gets_its_own_log(tmp_path, fake):
    pids = []
    for i in range(3):
        work = _request(tmp_path, f"r{i}", "ok")
        code, reused = convert_server.run_request("fake_converter", work / "request.json", fake, 1, 60)
        assert code == 0 and reused == (i > 0)
        pids.append((work / "out.txt").read_text())
        log = (work / "convert.log").read_text()
        assert log.count("converting ok") == 1 and "native stderr line" in log
    assert len(set(pids)) == 1 and pids[0] != str(os.getpid())
    # a second thread count gets its own process
    work = _request(tmp_path, "t2", "ok")
    assert convert_server.run_request("fake_converter", work / "request.json", fake, 2, 60) == (0, False)
    assert (work / "out.txt").read_text() != pids[0]


@pytest.mark.parametrize("what,needle", [("raise", "ValueError: bad layer conv9"),
                                         ("exit", "tflite_convert: unknown scheme 'int3'"),
                                         ("crash", "converting crash")])
def test_a_failed_request_fails_alone_and_the_next_starts_a_fresh_process(tmp_path, fake, what, needle):
    work = _request(tmp_path, "first", "ok")
    convert_server.run_request("fake_converter", work / "request.json", fake, 1, 60)
    first = (work / "out.txt").read_text()
    bad = _request(tmp_path, "bad", what)
    code, _ = convert_server.run_request("fake_converter", bad / "request.json", fake, 1, 60)
    assert code != 0 and needle in (bad / "convert.log").read_text()
    after = _request(tmp_path, "after", "ok")
    assert convert_server.run_request("fake_converter", after / "request.json", fake, 1, 60) == (0, False)
    assert (after / "out.txt").read_text() != first


def test_a_server_that_cannot_start_fails_the_request_with_its_error(tmp_path, fake):
    (tmp_path / "broken_converter.py").write_text("raise ImportError('no module named tensorflow_lite_magic')\n")
    work = _request(tmp_path, "broken", "ok")
    code, reused = convert_server.run_request("broken_converter", work / "request.json", fake, 1, 60)
    assert code != 0 and not reused
    assert "no module named tensorflow_lite_magic" in (work / "convert.log").read_text()


def test_a_hung_request_times_out_and_is_killed(tmp_path, fake):
    work = _request(tmp_path, "hang", "hang")
    with pytest.raises(TimeoutError, match="no answer in 2 s"):
        convert_server.run_request("fake_converter", work / "request.json", fake, 1, 2)
    work = _request(tmp_path, "ok", "ok")
    assert convert_server.run_request("fake_converter", work / "request.json", fake, 1, 60) == (0, False)


def test_switched_off_it_runs_one_process_per_request(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("BSB_CONVERTER_SERVER", "0")
    pids = set()
    for i in range(2):
        work = _request(tmp_path, f"r{i}", "ok")
        assert convert_server.run_request("fake_converter", work / "request.json", fake, 1, 60) == (0, False)
        pids.add((work / "out.txt").read_text())
        assert "converting ok" in (work / "convert.log").read_text()
    assert len(pids) == 2


def test_a_sweep_path_with_a_newline_reaches_the_server_whole(tmp_path, fake):
    """The request's path crosses the pipe as one JSON line: a newline (or a trailing space) in a
    sweep folder's name used to split it into two requests, neither of them a file."""
    work = tmp_path / "sweep\nline two "
    work.mkdir()
    (work / "request.json").write_text(json.dumps({"what": "ok", "out": str(work / "out.txt")}))
    assert convert_server.run_request("fake_converter", work / "request.json", fake, 1, 60) == (0, False)
    assert (work / "out.txt").is_file() and "converting ok" in (work / "convert.log").read_text()
    again = _request(tmp_path, "after", "ok")  # and the same server goes on to the next request
    assert convert_server.run_request("fake_converter", again / "request.json", fake, 1, 60) == (0, True)


def test_a_converter_killed_by_a_signal_is_reported_with_the_signal_and_its_log(tmp_path, fake):
    """A SIGKILLed converter (the OOM killer) fails the cell with the signal and the log's path, not
    with the last line it logged before (TensorFlow's start-up chatter)."""
    from bsb_hydra.backends.tflite.build import TfliteBackend

    work = _request(tmp_path, "killed", "sigkill")
    jobs = [{"scheme": "static", "out": str(work / "out.tflite")}]
    with pytest.raises(RuntimeError) as e:
        TfliteBackend._run_converter("fake_converter", work / "request.json", work, jobs, fake)
    first = str(e.value).splitlines()[0]
    assert first == f"TFLite conversion (static): the converter was killed by SIGKILL; log: {work / 'convert.log'}"
    assert "fake_converter server killed by SIGKILL" in (work / "convert.log").read_text()
    after = _request(tmp_path, "after", "ok")  # the next request gets a fresh converter
    assert convert_server.run_request("fake_converter", after / "request.json", fake, 1, 60) == (0, False)
