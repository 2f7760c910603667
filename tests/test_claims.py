"""Claim mode (--claim): workers take classes and shards from OUT; a dead worker's unit is taken over."""

import os
import signal
import subprocess
import time

from augment.run.claims import ClaimBoard, ClaimQueue
from tests.helpers import ENV, REPO, build_cmd, tar_samples, token_bytes


def test_one_claim_per_unit_and_a_stale_lease_is_taken_over(tmp_path):
    a, b = ClaimBoard(tmp_path, "learn", 0, lease=0.5), ClaimBoard(tmp_path, "learn", 1, lease=0.5)
    with a, b:
        assert a.try_claim("u1") and not b.try_claim("u1")  # exclusive
        assert b.live_elsewhere("u1") and not a.live_elsewhere("u1")
        time.sleep(0.8)
        assert not b.try_claim("u1")  # a's heartbeat keeps its lease alive
        a._stop.set()  # a freezes: no more heartbeats
        a._thread.join()
        time.sleep(0.7)
        assert b.try_claim("u1")  # expired: b takes generation 2
        assert [p.name for p in (tmp_path / ".claims" / "learn").iterdir()] == ["u1.2"]
        assert not a.try_claim("u1") or "u1" in a.held  # a's old generation is gone
        b.release("u1")
        assert not list((tmp_path / ".claims" / "learn").iterdir())


def test_the_queue_hands_each_unit_to_one_worker_and_waits_for_live_claims(tmp_path):
    done: set[int] = set()
    a, b = ClaimBoard(tmp_path, "generate", 0, lease=30), ClaimBoard(tmp_path, "generate", 1, lease=30)
    with a, b:
        qa = ClaimQueue(a, range(5), key=str, done=done.__contains__, poll=0.05)
        qb = ClaimQueue(b, range(5), key=str, done=done.__contains__, poll=0.05)
        assert qa.take(2) == [0, 1] and qb.take(2) == [2, 3] and qa.take(5) == [4]
        assert qb.take(1) == []  # all held by a, b does not block
        waited = []
        qb.on_wait = waited.append
        import threading

        def finish_later():
            time.sleep(0.3)
            done.update({0, 1, 4})
            for k in "014":
                a.release(k)

        threading.Thread(target=finish_later).start()
        assert qb.take(1, block=True) == []  # waits for a, then nothing is left
        assert waited and waited[0] == 3
        assert qb.reserve([2, 3]) and not qa.reserve([3])


def test_three_claim_workers_one_killed_mid_class_build_the_one_worker_bytes(labels3, one_process_build, tmp_path):
    one, out = one_process_build, tmp_path / "claim"
    procs = [
        subprocess.Popen(
            build_cmd(
                labels3,
                out,
                "--classes-per-step",
                "1",
                "--claim",
                "--lease",
                "3",
                "--worker-index",
                str(i),
                "--num-workers",
                "3",
            ),
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    victim = procs[1]
    claims = out / ".claims" / "learn"
    deadline, held = time.time() + 300, None
    while held is None and time.time() < deadline and victim.poll() is None:  # the victim holds a class
        for p in claims.glob("*.*") if claims.is_dir() else ():
            try:
                if p.read_text().split()[1:2] == [str(victim.pid)]:
                    held = p.name.rsplit(".", 1)[0]
            except (FileNotFoundError, IndexError):
                pass
        time.sleep(0.005)
    assert held is not None, "the victim never held a class"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    results = [p.communicate(timeout=900) + (p.returncode,) for p in (procs[0], procs[2])]
    for _, stderr, code in results:
        assert code == 0, stderr[-2000:]
    assert any("waiting for" in stderr for _, stderr, _ in results)  # someone waited for the lease
    assert (out / "tokens" / held / "meta.json").is_file()  # the dead worker's class was redone
    assert token_bytes(out) == token_bytes(one) and len(token_bytes(one)) == 3
    assert tar_samples(out) == tar_samples(one) and len(tar_samples(one)) == 12
    assert not [p for p in (out / ".claims").rglob("*") if p.is_file()]  # every claim released
    assert not list(out.rglob("*.tmp")) and not (out / "checkpoints").exists()  # the victim's checkpoint too
