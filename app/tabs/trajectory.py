"""Trajectory tab: one reverse ODE or SDE run, as decoded frames over time, latent paths and step sizes."""
import gradio as gr
import torch

from lsgm_core import solvers

from .. import plots
from ..common import SLOW, Context, integer, user_errors
from ..images import grid
from ..solver_controls import progress_callback, solver_args, solver_controls

MAX_PATHS = 8
MAX_FRAMES = 20


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    with gr.Row():
        num = gr.Slider(1, MAX_PATHS, value=4, step=1, label="Samples (paths)")
        frames = gr.Slider(3, MAX_FRAMES, value=8, step=1, label="Frames",
                           info="times recorded between t = 1 and t ≈ 0")
        seed = gr.Number(0, precision=0, minimum=0, label="Seed")
    solver, log_atol, log_rtol, steps = solver_controls("trajectory", "ode", -5)
    with gr.Row():
        go = gr.Button("Run trajectory", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    stats = gr.Markdown(elem_id="trajectory-stats")
    hat = gr.Image(label="Predicted clean image, decoded z0_hat (rows: samples; columns: t from 1 to 0)",
                   type="filepath", format="png", interactive=False, elem_id="trajectory-frames")
    noisy = gr.Image(label="The noisy latent z_t itself, decoded", type="filepath", format="png",
                     interactive=False)
    with gr.Row():
        paths = gr.Plot(label="Latent paths (PCA)", elem_id="trajectory-paths")
        sizes = gr.Plot(label="Solver step sizes", elem_id="trajectory-steps")
    with gr.Row():
        gif = gr.Image(label="Animation: z_t (top) and z0_hat (bottom) over time", type="filepath",
                       interactive=False)
    download = gr.DownloadButton("Download GIF")

    @user_errors
    def run(model_id, num, frames, seed, solver, log_atol, log_rtol, steps,
            request: gr.Request, progress=gr.Progress()):
        n = integer("samples", num, 1, MAX_PATHS)
        k = integer("frames", frames, 3, MAX_FRAMES)
        kwargs = solver_args(solver, log_atol, log_rtol, steps)
        model = ctx.registry.load(model_id)
        with torch.inference_mode():
            result = solvers.sample(model, n, solver, **kwargs, seed=integer("seed", seed, 0, 2**31 - 1),
                                    record_times=k,
                                    callback=progress_callback(progress, ctx.cancellations.checker(request)))
            traj = result.trajectory
            t_ = len(traj.times)  # fixed-step solvers record on their own grid: maybe fewer frames
            decode = lambda z: model.decode_images(z.flatten(0, 1)).unflatten(0, (t_, n))  # noqa: E731
            hats, zts = decode(traj.z0_hat), decode(traj.zt)
        # rows: samples, columns: time
        by_sample = lambda ims: ims.transpose(0, 1).flatten(0, 1)  # noqa: E731
        hat_path = ctx.outputs.png(grid(by_sample(hats), ncol=t_), "trajectory")
        noisy_path = ctx.outputs.png(grid(by_sample(zts), ncol=t_), "trajectory-zt")
        gif_path = ctx.outputs.gif([grid(torch.cat([zts[i], hats[i]]), ncol=n) for i in range(t_)], "trajectory")
        times = traj.times.cpu().numpy()
        fig_paths = plots.latent_paths(traj.zt.flatten(2).cpu().numpy(), times)
        fig_sizes = plots.step_sizes(traj.step_times, traj.step_sizes, result.nfe, solver)
        text = (f"**{n} paths** · solver **{solver}** · **{len(traj.step_sizes)} steps** · "
                f"**NFE {result.nfe}** · **{result.seconds:.2f} s** · frames at t = "
                + ", ".join(f"{t:.3g}" for t in times))
        return hat_path, noisy_path, fig_paths, fig_sizes, gif_path, gif_path, text

    event = go.click(run, [picker, num, frames, seed, solver, log_atol, log_rtol, steps],
                     [hat, noisy, paths, sizes, gif, download, stats], api_name="trajectory", **SLOW)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)
