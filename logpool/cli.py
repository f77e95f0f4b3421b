"""python -m logpool {paths,receive,version}"""
import argparse
import sys

import logpool
from logpool import paths


def cmd_paths(args):
    print(f"lib {paths.lib_path()}")
    print(f"lua {paths.lua_dir()}")
    print(f"include {paths.include_dir()}")
    return 0


def cmd_receive(args):
    from logpool import receiver
    return receiver.main(args.listen, args.out)


def cmd_version(args):
    print(logpool.__version__)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m logpool",
                                     description="logpool: ship logs out of nginx workers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("paths", help="print where the library, the Lua module and the header are")
    p.set_defaults(func=cmd_paths)
    p = sub.add_parser("receive", help="a collector writing complete lines to a file or stdout")
    p.add_argument("--listen", required=True, help="unix:/path or tcp://host:port")
    p.add_argument("--out", help="append messages to this file (default: stdout)")
    p.set_defaults(func=cmd_receive)
    p = sub.add_parser("version", help="print the package version")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
