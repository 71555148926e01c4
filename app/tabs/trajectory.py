"""Trajectory tab: one reverse ODE or SDE run, as decoded frames over time, latent paths and step sizes;
beside it, for a model with a distilled student, the student's 1-, 2- and 4-step paths from the same z1."""
import gradio as gr
import torch
from PIL import Image

from lsgm_core import solvers

from .. import plots
from ..common import SLOW, Context, integer, user_errors
from ..images import grid, labelled_grid
from ..solver_controls import progress_callback, solver_args, solver_controls

MAX_PATHS = 8
MAX_FRAMES = 20
NO_STUDENT = "no distilled student to show beside it (python -m lsgm_core.distill makes one)"


def student_paths(model, z1: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The student's path from z1 [N, ...] at each of its step counts k: (k, its grid times [k + 1],
    the decoded z_t there [k + 1, N, C, H, W], the last being the sample, and z0 [N, ...])."""
    out = []
    for k in model.student.steps:
        times = solvers.student_grid(model.prior.sde, k, model.student.denoise_t)
        result = solvers.sample(model, len(z1), "distilled", steps=k, z1=z1, record_times=times)
        zt = result.trajectory.zt[:-1]
        # the last state is the sample itself: its image as sample() gives it, not a second decode
        states = model.decode_images(zt.flatten(0, 1), model.student.decoder).unflatten(0, zt.shape[:2])
        out.append((k, result.trajectory.times, torch.cat([states, result.images[None]]), result.z0))
    return out


def student_picture(paths) -> Image.Image:
    """Rows: the step counts (one row per sample within each), columns: the union of their grid
    times (the grids nest), blank where a path has no state at that time."""
    columns = sorted({round(t, 6) for _, times, _, _ in paths for t in times.tolist()}, reverse=True)
    n, (c, h, w) = paths[0][2].shape[1], paths[0][2].shape[2:]
    tiles = torch.full((len(paths), n, len(columns), c, h, w), 0.5)  # the grid's own grey: an empty cell
    for r, (_, times, frames, _) in enumerate(paths):
        for j, t in enumerate(times.tolist()):
            tiles[r, :, columns.index(round(t, 6))] = frames[j]
    labels = {r * n: f"{k} step{'s' * (k > 1)}" for r, (k, _, _, _) in enumerate(paths)}
    return labelled_grid(tiles.flatten(0, 2), len(columns), labels, [f"t={t:.3g}" for t in columns])


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
    student = gr.Image(label="Distilled student from the same z1 (rows: 1, 2 and 4 steps, a row per sample; "
                             "columns: its grid times, decoded z_t; the last, its samples)", type="filepath",
                       format="png", interactive=False, visible=False, elem_id="trajectory-student")
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
            # the record starts at t = 1 (Trajectory): its first state is this run's z1
            walks = student_paths(model, traj.zt[0]) if getattr(model, "student", None) is not None else None
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
        if walks is None:
            return hat_path, noisy_path, fig_paths, fig_sizes, gif_path, gif_path, text + f"\n\n{NO_STUDENT}", \
                gr.update(value=None, visible=False)
        # relative RMS: how far each student's z0 lies from this run's, in units of its spread
        gaps = [((z0 - result.z0).pow(2).mean().sqrt() / result.z0.std()).item() for _, _, _, z0 in walks]
        text += ("\n\n**Distilled student** from the same z1, relative RMS of its z0 from this run's: "
                 + " · ".join(f"{k} step{'s' * (k > 1)} **{g:.3f}**" for (k, _, _, _), g in zip(walks, gaps)))
        student_path = ctx.outputs.png(student_picture(walks), "trajectory-student")
        return (hat_path, noisy_path, fig_paths, fig_sizes, gif_path, gif_path, text,
                gr.update(value=student_path, visible=True))

    event = go.click(run, [picker, num, frames, seed, solver, log_atol, log_rtol, steps],
                     [hat, noisy, paths, sizes, gif, download, stats, student], api_name="trajectory", **SLOW)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)
