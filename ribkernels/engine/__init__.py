"""The training engine behind train.py: config loading, checkpoint I/O, distributed helpers,
logging/metrics/plots and the train/eval loops (SPEC §4)."""
from .config import DEFAULTS, build_parser, explicit_keys, resolve
from .scheduler import WarmupCosineLR
from .trainer import Trainer, param_digest

__all__ = ["DEFAULTS", "build_parser", "resolve", "WarmupCosineLR", "Trainer", "param_digest", "main"]


def main(argv=None) -> int:
    """Entry point of train.py: parse flags, train (or evaluate), return the exit status."""
    args = build_parser(argv).parse_args(argv)
    cfg = resolve(args)
    if args.eval_only and args.resume:
        raise SystemExit("--eval-only takes --checkpoint, not --resume")
    model_file = None
    if args.eval_only and args.checkpoint:  # evaluate the model the checkpoint's own config describes
        from .model_file import eval_config, read_model_file

        model_file = read_model_file(args.checkpoint)
        cfg = eval_config(model_file.config, cfg, explicit_keys(args))
    trainer = Trainer(cfg, resume=args.resume, stop_after=args.stop_after, eval_only=args.eval_only)
    try:
        if args.eval_only:
            trainer.evaluate_checkpoint(args.checkpoint, model_file)
        else:
            trainer.fit()
    finally:
        trainer.close()
    return 0
