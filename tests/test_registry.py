"""The one plug-in registry behind scorers, connectors and orchestrator adapters."""

from __future__ import annotations

import doctest

import pytest

import evalsvc.registry
from connectors import available as connectors
from evalsvc.adapters import available as adapters
from evalsvc.registry import Registry
from scorers.registry import available as scorers


def test_doctests() -> None:
    assert doctest.testmod(evalsvc.registry).failed == 0


def test_a_taken_or_missing_key_is_refused_and_the_same_class_twice_is_fine() -> None:
    reg = Registry("widget", key="source", group="evalsvc.test-widgets")

    class A:
        source = "x"

    class B:
        source = "x"

    class Nameless:
        pass

    assert reg.register(A) is A and reg.register(A) is A
    with pytest.raises(ValueError, match="widget source 'x' is already registered by"):
        reg.register(B)
    with pytest.raises(TypeError, match="has no source"):
        reg.register(Nameless)
    assert reg.classes() == {"x": A}


def test_the_three_registries_list_their_built_ins() -> None:
    assert {"json", "otlp", "temporal", "inngest", "celery", "langfuse", "langsmith"} <= set(connectors())
    assert {"json_schema", "regex", "llm_judge"} <= set(scorers())
    assert {"temporal", "celery", "inngest"} <= set(adapters())


def test_threads_that_look_up_together_all_see_the_built_ins() -> None:
    """A second thread must not look while the first is still importing the built-ins (it would
    find the name unknown: what scoring threads starting together in a Celery worker hit)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    started = threading.Event()

    def builtins() -> None:
        started.set()
        time.sleep(0.2)  # a slow import

        @reg.register
        class Knob:
            name = "knob"

    reg = Registry("widget", key="name", group="evalsvc.test-widgets", builtins=builtins)
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _: reg.get("knob"), range(8)))
    assert started.is_set() and all(cls is not None and cls.__name__ == "Knob" for cls in found)
