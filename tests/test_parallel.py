"""``in_parallel``: a read of many workloads runs a few kubectls (or API requests) at
once; an interrupt in one of them ends the read, after the others have ended."""

import threading
import time

import pytest

import bump_image
from bump_image import Interrupted, in_parallel


def test_every_item_is_done_at_most_width_at_a_time():
    lock, state = threading.Lock(), {"now": 0, "most": 0, "done": []}

    def work(item):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
            state["done"].append(item)
    in_parallel(work, list(range(10)), width=4)
    assert sorted(state["done"]) == list(range(10))
    assert state["most"] == 4
    assert bump_image.PARALLEL == 4


def test_an_interrupt_in_one_is_raised_after_the_others_end():
    ended = []

    def work(item):
        if item == 1:
            time.sleep(0.03)                  # once the first three have all started
            raise Interrupted(15)
        time.sleep(0.1)
        ended.append(item)
    with pytest.raises(Interrupted) as caught:
        in_parallel(work, [0, 1, 2, 3, 4, 5, 6, 7], width=3)
    assert caught.value.signum == 15
    assert 0 in ended and 2 in ended          # those already running were let end
    assert 7 not in ended                     # nothing new starts after an interrupt


def test_one_item_runs_in_the_callers_thread():
    seen = []
    in_parallel(lambda item: seen.append(threading.current_thread()), ["only"])
    assert seen == [threading.current_thread()]
