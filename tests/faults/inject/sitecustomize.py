"""Fault injection for tests/faults (on PYTHONPATH of a node and its workers, with ALNNODE_TEST_FAULT):
``raise`` makes the model's forward raise RuntimeError; ``exit`` kills the process running it (as a
segfault or the OOM killer would). Acts only when ``workers.inference`` is imported: the node itself,
which never imports it, is untouched."""

import importlib.abc
import importlib.machinery
import os
import sys

FAULT = os.environ.get("ALNNODE_TEST_FAULT")


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name != "workers.inference":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            original(module)
            real = module.predict

            def predict(*args, **kwargs):  # type: ignore[no-untyped-def]
                if FAULT == "raise":
                    raise RuntimeError("injected fault: the model's forward failed (CUDA error: an illegal memory access)")
                if FAULT == "exit":
                    os._exit(9)
                return real(*args, **kwargs)

            module.predict = predict

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if FAULT:
    sys.meta_path.insert(0, _Hook())
