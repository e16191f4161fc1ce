"""The conformance checks as pytest test classes: subclass one, set the class under test, done.

::

    from koopsweep.testing import TaskConformance, VariantConformance

    class TestMyVariant(VariantConformance):
        variant_cls = MyVariant

    class TestMyTask(TaskConformance):
        task_cls = MyTask
        task_params = {"n_train": 256}

Each check becomes its own test, so a report says which property failed. The classes are plain
(pytest collects them because the subclass's name starts with ``Test``); pytest itself is only
imported to skip the exactness test of a variant that does not claim exactness.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from koopsweep.testing import optimizer_conformance as oc
from koopsweep.testing import task_conformance as tc
from koopsweep.testing import variant_conformance as vc


class VariantConformance:
    """Conformance tests for the `Variant` in ``variant_cls``.

    Attributes: ``variant_cls`` (required); ``params``, the parameters the outputs, determinism and
    horizon checks use (default: the class's defaults); ``exact_params``, the ones the linear-system
    check uses when ``variant_cls.exact`` is True (default: ``params``); ``device`` (default ``cpu``).
    """

    variant_cls: ClassVar[type]
    params: ClassVar[Mapping[str, Any]] = {}
    exact_params: ClassVar[Mapping[str, Any] | None] = None
    device: ClassVar[str] = "cpu"

    def _variant(self) -> type:
        cls = getattr(self, "variant_cls", None)
        assert cls is not None, f"{type(self).__name__} must set variant_cls = <your Variant subclass>"
        return cls

    def test_contract(self) -> None:
        vc.check_variant_contract(self._variant(), params=self.params)

    def test_search_space(self) -> None:
        vc.check_variant_search_space(self._variant(), self.device)

    def test_outputs(self) -> None:
        vc.check_variant_outputs(self._variant(), self.device, params=self.params)

    def test_determinism(self) -> None:
        vc.check_variant_determinism(self._variant(), self.device, params=self.params)

    def test_horizons(self) -> None:
        vc.check_variant_horizons(self._variant(), self.device, params=self.params)

    def test_exact(self) -> None:
        cls = self._variant()
        if not cls.exact:
            import pytest

            pytest.skip(f"{cls.__name__} does not claim exact = True")
        params = self.exact_params if self.exact_params is not None else self.params
        vc.check_variant_exact(cls, self.device, params=params)


class TaskConformance:
    """Conformance tests for the `Task` in ``task_cls``, built with ``task_params`` on ``device``."""

    task_cls: ClassVar[type]
    task_params: ClassVar[Mapping[str, Any]] = {}
    device: ClassVar[str] = "cpu"

    def _task(self) -> type:
        cls = getattr(self, "task_cls", None)
        assert cls is not None, f"{type(self).__name__} must set task_cls = <your Task subclass>"
        return cls

    def test_contract(self) -> None:
        tc.check_task_contract(self._task(), **self.task_params)

    def test_determinism(self) -> None:
        tc.check_task_determinism(self._task(), self.device, **self.task_params)

    def test_loss(self) -> None:
        tc.check_task_loss(self._task(), self.device, **self.task_params)

    def test_eval(self) -> None:
        tc.check_task_eval(self._task(), self.device, **self.task_params)

    def test_check_loss(self) -> None:
        tc.check_task_check_loss(self._task(), self.device, **self.task_params)


class OptimizerConformance:
    """Conformance tests for the `OptimizerPlugin` in ``optimizer_cls``, built with ``params`` on ``device``."""

    optimizer_cls: ClassVar[type]
    params: ClassVar[Mapping[str, Any]] = {}
    device: ClassVar[str] = "cpu"

    def _optimizer(self) -> type:
        cls = getattr(self, "optimizer_cls", None)
        assert cls is not None, f"{type(self).__name__} must set optimizer_cls = <your OptimizerPlugin subclass>"
        return cls

    def test_contract(self) -> None:
        oc.check_optimizer_contract(self._optimizer(), params=self.params)

    def test_search_space(self) -> None:
        oc.check_optimizer_search_space(self._optimizer(), self.device)

    def test_build(self) -> None:
        oc.check_optimizer_build(self._optimizer(), self.device, params=self.params)

    def test_determinism(self) -> None:
        oc.check_optimizer_determinism(self._optimizer(), self.device, params=self.params)

    def test_evaluation(self) -> None:
        oc.check_optimizer_evaluation(self._optimizer(), self.device, params=self.params)

    def test_state_dict(self) -> None:
        oc.check_optimizer_state_dict(self._optimizer(), self.device, params=self.params)

    def test_schedule(self) -> None:
        oc.check_optimizer_schedule(self._optimizer(), self.device, params=self.params)

    def test_accelerated(self) -> None:
        oc.check_optimizer_accelerated(self._optimizer(), self.device, params=self.params)
