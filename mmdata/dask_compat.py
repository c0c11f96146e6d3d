"""A fix for Beam's Dask runner (apache-beam 2.77), applied when a job runs on it.

Beam's `DaskRunner` ParDo translation builds one output receiver per transform and reuses it for every bundle:
when a bag is computed more than once in one process (side inputs are computed inside the tasks that read
them), outputs of earlier computations are returned again, so elements are duplicated. It also collects a
bundle's outputs before `finish_bundle`, losing anything emitted there. This module registers a ParDo
translation that gives every bundle fresh receivers and collects outputs after `finish_bundle`.
"""

from __future__ import annotations

import typing as t

_PATCHED = False


def _apply_dofn_to_bundle(items, fn_signature_args, window_fn, invoker_kwargs):
    from apache_beam.runners.common import DoFnInvoker, _OutputHandler
    from apache_beam.runners.dask.transform_evaluator import OneReceiver

    receivers = OneReceiver()
    handler = _OutputHandler(
        window_fn=window_fn,
        main_receivers=receivers[None],
        tagged_receivers=receivers,
        per_element_output_counter=None,
        output_batch_converter=None,
        process_yields_batches=False,
        process_batch_yields_elements=False,
    )
    invoker = DoFnInvoker.create_invoker(*fn_signature_args, handler, **invoker_kwargs)
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for it in items:
        invoker.invoke_process(it)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return [v.value for v in receivers.values]


def patch_dask_runner() -> None:
    """Install the fixed ParDo translation (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    import apache_beam
    from apache_beam import DoFn
    from apache_beam.runners.common import DoFnContext, DoFnSignature
    from apache_beam.runners.dask import transform_evaluator as te

    class ParDo(te.DaskBagOp):
        def apply(self, input_bag, side_inputs=None):
            transform = t.cast(apache_beam.ParDo, self.transform)
            args, kwargs = transform.raw_side_inputs
            main_input = next(iter(self.applied.main_inputs.values()))
            window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
            invoker_kwargs = dict(
                context=DoFnContext(transform.label, state=None),
                side_inputs=side_inputs,
                input_args=list(args),
                input_kwargs=kwargs,
                user_state_context=None,
                bundle_finalizer_param=DoFn.BundleFinalizerParam(),
            )
            return input_bag.map(te.get_windowed_value, window_fn).map_partitions(
                _apply_dofn_to_bundle, [DoFnSignature(transform.fn)], window_fn, invoker_kwargs
            )

    te.TRANSLATIONS[apache_beam.ParDo] = ParDo
    _PATCHED = True
