"""How a generating request runs: its checks and memory plan first, alongside other requests, then its denoising,
one request at a time.

Planning a large job traces the model at every stage's size (a refused 16384² job also searches for the largest
size that fits: tens of seconds to minutes on a CPU). A 64×64 request behind it should not wait for that, so the
generating events (/generate, /highres, /img2img) share one concurrency group of :data:`PLANNERS` requests: each
validates its inputs, loads its model (the cache loads one at a time) and plans its memory there, refusing what
does not fit before it waits; only then does it take :attr:`UIContext.denoiser`, which lets one request at a time
run the model.
"""

from contextlib import contextmanager

from ..pipelines.highres import decode_images, highres_latents, job_offload

PLANNERS = 4  # generating requests that may be checked and planned at once (one denoises at a time)
JOB_EVENT = {"concurrency_id": "generating", "concurrency_limit": PLANNERS}  # gradio event options


@contextmanager
def denoising(ctx, progress):
    """Hold the denoiser lock for the body; the progress display says so while another request holds it."""
    if not ctx.denoiser.acquire(blocking=False):
        progress(0, desc="waiting: another request is generating")
        ctx.denoiser.acquire()
    try:
        yield
    finally:
        ctx.denoiser.release()


def progressive_image(pipe, params, options, stages):
    """:func:`linfuse.pipelines.generate_highres` from stages already checked and planned
    (:func:`linfuse.pipelines.highres.checked_stages`)."""
    with job_offload(pipe, stages):
        latents = highres_latents(pipe, params, options, stages=stages)  # its stage bar is tqdm, then gr.Progress
        return decode_images(pipe, latents, options)[0]
