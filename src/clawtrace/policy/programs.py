"""Per-program knowledge for the shell normaliser (``policy/shell.py``).

What a parser cannot know from syntax alone: which options take a value (so
that the value is not mistaken for an operand), which spellings of an option
mean the same thing (``rm -r`` / ``-R`` / ``--recursive`` / ``--rec``), which
operands and option values are paths, hosts or shell code, and which
programs merely run another program (wrappers) or run code given inline
(interpreters).

Options are declared in a small text form so that the tables stay readable::

    "recursive -r -R --recursive"    canonical name, then its spellings
    "archive,recursive -a"           one spelling may stand for several flags
    "output=write -o --output"       takes a value; the value's kind follows "="

Value kinds: ``value`` (opaque), ``path``, ``write`` (a path the program
writes), ``host`` (a host or URL), ``data`` (opaque unless ``@file``, then a
path: curl's ``-d @file``), ``shell`` (a shell command the program runs:
``rsync -e``, ``git rebase --exec``), ``code`` (interpreter code: ``python
-c``), ``optional`` (a value only when attached: ``sed -i.bak``, ``--in-place=.bak``).
A canonical name ending in ``?`` takes an optional value in its long spelling
only (``--color[=WHEN]``): its short spelling takes none, so ``rm -ir`` is
``-i -r``, not ``-i`` with the value ``r``.

Anything not listed falls back to generic handling in shell.py, so the
tables only need the programs where precision matters to a policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

_T = TypeVar("_T")
ValueKind = Literal["", "value", "path", "write", "host", "data", "shell", "code", "optional"]
_KINDS: frozenset[str] = frozenset({"value", "path", "write", "host", "data", "shell", "code", "optional"})

# How operands (non-option words) are read.
#   paths      every operand is a path
#   data       no operand is a path (echo, kill, git commit's message...)
#   auto       operands that look like paths are paths (unknown programs)
#   urls       operands are URLs, scheme optional (curl, wget)
#   host_first the first operand is a host, the rest is data (ssh, nc)
#   remote     operands are [user@]host:path or local paths (scp, rsync)
Positional = Literal["paths", "data", "auto", "urls", "host_first", "remote"]


@dataclass(frozen=True, slots=True)
class Option:
    names: tuple[str, ...]  # canonical flag names this spelling sets
    kind: ValueKind  # "" when the option takes no value

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    short: Mapping[str, Option] = field(default_factory=dict)
    long: Mapping[str, Option] = field(default_factory=dict)
    positional: Positional = "auto"
    # Leading operands that are data, not paths (grep PATTERN, chmod MODE)...
    leading_data: int = 0
    # ...unless one of these options supplied that data instead (grep -e, chmod --reference).
    data_unless: frozenset[str] = frozenset()
    # GNU getopt permutes: `rm / -rf` is `rm -rf /`. Wrappers and interpreters stop at the
    # first operand, because what follows belongs to the program they run.
    permute: bool = True
    # tee: operands are files written.
    writes_positional: bool = False


def _spec(*groups: str, **kw: object) -> ProgramSpec:
    short: dict[str, Option] = {}
    long: dict[str, Option] = {}
    for group in groups:
        head, *spellings = group.split()
        names_part, _, kind = head.partition("=")
        short_kind = kind
        if names_part.endswith("?"):
            # `--color[=WHEN]`: the long spelling may take a value, the short one never does.
            names_part, kind, short_kind = names_part[:-1], "optional", ""
        if kind and kind not in _KINDS:
            raise ValueError(f"unknown value kind {kind!r} in {group!r}")
        names = tuple(names_part.split(","))
        long_opt = Option(names, kind)  # type: ignore[arg-type]
        short_opt = Option(names, short_kind)  # type: ignore[arg-type]
        for s in spellings:
            if s.startswith("--"):
                long[s[2:]] = long_opt
            elif s.startswith("-") and len(s) == 2:
                short[s[1]] = short_opt
            else:
                raise ValueError(f"bad spelling {s!r} in {group!r}")
    return ProgramSpec(short=short, long=long, **kw)  # type: ignore[arg-type]


def _alias(spec: _T, *names: str) -> dict[str, _T]:
    return dict.fromkeys(names, spec)


# --- file-system programs -----------------------------------------------------------------------

_RM = _spec(
    "recursive -r -R --recursive",
    "force -f --force",
    "interactive? -i --interactive",
    "interactive-once -I",
    "dir -d --dir",
    "no-preserve-root --no-preserve-root",
    "preserve-root? --preserve-root",
    "one-file-system --one-file-system",
    "verbose -v --verbose",
    positional="paths",
)
_CP = _spec(
    "recursive -r -R --recursive",
    "archive,recursive -a --archive",
    "force -f --force",
    "interactive -i --interactive",
    "no-clobber -n --no-clobber",
    "link -l --link",
    "symbolic-link -s --symbolic-link",
    "update? -u --update",
    "verbose -v --verbose",
    "preserve? -p --preserve",
    "no-dereference -P -d --no-dereference",
    "dereference -L --dereference",
    "target-directory=path -t --target-directory",
    "no-target-directory -T --no-target-directory",
    "backup? -b --backup",
    "suffix=value -S --suffix",
    "parents --parents",
    "remove-destination --remove-destination",
    "one-file-system -x --one-file-system",
    "sparse=value --sparse",
    "reflink? --reflink",
    positional="paths",
)
_MV = _spec(
    "force -f --force",
    "interactive -i --interactive",
    "no-clobber -n --no-clobber",
    "update? -u --update",
    "verbose -v --verbose",
    "target-directory=path -t --target-directory",
    "no-target-directory -T --no-target-directory",
    "backup? -b --backup",
    "suffix=value -S --suffix",
    "exchange --exchange",
    positional="paths",
)
_CHMOD = _spec(
    "recursive -R --recursive",
    "changes -c --changes",
    "silent -f --silent --quiet",
    "verbose -v --verbose",
    "reference=path --reference",
    "no-preserve-root --no-preserve-root",
    "preserve-root --preserve-root",
    positional="paths",
    leading_data=1,
    data_unless=frozenset({"reference"}),
)
_CHOWN = _spec(
    "recursive -R --recursive",
    "changes -c --changes",
    "silent -f --silent --quiet",
    "verbose -v --verbose",
    "no-dereference -h --no-dereference",
    "dereference --dereference",
    "H -H",
    "L -L",
    "P -P",
    "from=value --from",
    "reference=path --reference",
    "no-preserve-root --no-preserve-root",
    "preserve-root --preserve-root",
    positional="paths",
    leading_data=1,
    data_unless=frozenset({"reference"}),
)
_LN = _spec(
    "symbolic -s --symbolic",
    "force -f --force",
    "no-dereference -n --no-dereference",
    "relative -r --relative",
    "logical -L --logical",
    "physical -P --physical",
    "interactive -i --interactive",
    "verbose -v --verbose",
    "target-directory=path -t --target-directory",
    "no-target-directory -T --no-target-directory",
    "backup? -b --backup",
    "suffix=value -S --suffix",
    positional="paths",
)
_TOUCH = _spec(
    "a -a",
    "no-create -c --no-create",
    "date=value -d --date",
    "m -m",
    "reference=path -r --reference",
    "t=value -t",
    "no-dereference -h --no-dereference",
    "time=value --time",
    positional="paths",
)
_MKDIR = _spec(
    "parents -p --parents",
    "mode=value -m --mode",
    "verbose -v --verbose",
    "context? -Z --context",
    positional="paths",
)
_RMDIR = _spec(
    "parents -p --parents",
    "ignore-fail-on-non-empty --ignore-fail-on-non-empty",
    "verbose -v --verbose",
    positional="paths",
)
_TRUNCATE = _spec(
    "size=value -s --size",
    "reference=path -r --reference",
    "no-create -c --no-create",
    "io-blocks -o --io-blocks",
    positional="paths",
)
_SHRED = _spec(
    "iterations=value -n --iterations",
    "size=value -s --size",
    "remove? -u --remove",
    "zero -z --zero",
    "force -f --force",
    "exact -x --exact",
    "verbose -v --verbose",
    "random-source=path --random-source",
    positional="paths",
)
_INSTALL = _spec(
    "directory -d --directory",
    "target-directory=path -t --target-directory",
    "no-target-directory -T --no-target-directory",
    "mode=value -m --mode",
    "owner=value -o --owner",
    "group=value -g --group",
    "D -D",
    "compare -C --compare",
    "backup? -b --backup",
    "suffix=value -S --suffix",
    "strip -s --strip",
    "strip-program=shell --strip-program",
    "preserve-timestamps -p --preserve-timestamps",
    "verbose -v --verbose",
    positional="paths",
)
_TEE = _spec(
    "append -a --append",
    "ignore-interrupts -i --ignore-interrupts",
    "p -p",
    "output-error? --output-error",
    positional="paths",
    writes_positional=True,
)
_LS = _spec(
    "recursive -R --recursive",
    "all -a --all",
    "almost-all -A --almost-all",
    "long -l",
    "human-readable -h --human-readable",
    "color? --color",
    "ignore=value -I --ignore",
    "hide=value --hide",
    "sort=value --sort",
    "format=value --format",
    "time-style=value --time-style",
    "block-size=value --block-size",
    "width=value -w --width",
    "tabsize=value -T --tabsize",
    positional="paths",
)
_GREP = _spec(
    "recursive -r --recursive",
    "dereference-recursive,recursive -R --dereference-recursive",
    "regexp=value -e --regexp",
    "file=path -f --file",
    "ignore-case -i --ignore-case",
    "invert-match -v --invert-match",
    "count -c --count",
    "files-with-matches -l --files-with-matches",
    "line-number -n --line-number",
    "extended-regexp -E --extended-regexp",
    "fixed-strings -F --fixed-strings",
    "perl-regexp -P --perl-regexp",
    "word-regexp -w --word-regexp",
    "quiet -q --quiet --silent",
    "after-context=value -A --after-context",
    "before-context=value -B --before-context",
    "context=value -C --context",
    "max-count=value -m --max-count",
    "include=value --include",
    "exclude=value --exclude",
    "exclude-dir=value --exclude-dir",
    "exclude-from=path --exclude-from",
    "color? --color --colour",
    "label=value --label",
    "devices=value -D --devices",
    "directories=value -d --directories",
    "binary-files=value --binary-files",
    positional="paths",
    leading_data=1,
    data_unless=frozenset({"regexp", "file"}),
)
_RG = _spec(
    "regexp=value -e --regexp",
    "file=path -f --file",
    "glob=value -g --glob",
    "type=value -t --type",
    "type-not=value -T --type-not",
    "max-count=value -m --max-count",
    "max-depth=value -d --max-depth",
    "after-context=value -A --after-context",
    "before-context=value -B --before-context",
    "context=value -C --context",
    "replace=value -r --replace",
    "ignore-file=path --ignore-file",
    "pre=shell --pre",
    "threads=value -j --threads",
    "encoding=value -E --encoding",
    positional="paths",
    leading_data=1,
    data_unless=frozenset({"regexp", "file"}),
)
_SED = _spec(
    "expression=value -e --expression",
    "file=path -f --file",
    "in-place=optional -i --in-place",
    "quiet -n --quiet --silent",
    "regexp-extended -E -r --regexp-extended",
    "separate -s --separate",
    "null-data -z --null-data",
    "line-length=value -l --line-length",
    "sandbox --sandbox",
    positional="paths",
    leading_data=1,
    data_unless=frozenset({"expression", "file"}),
)
_TAR = _spec(
    "create -c --create",
    "extract -x --extract --get",
    "list -t --list",
    "append -r --append",
    "update -u --update",
    "concatenate -A --catenate --concatenate",
    "diff -d --diff --compare",
    "delete --delete",
    "gzip -z --gzip --gunzip",
    "bzip2 -j --bzip2",
    "xz -J --xz",
    "zstd --zstd",
    "auto-compress -a --auto-compress",
    "verbose -v --verbose",
    "file=path -f --file",
    "directory=path -C --directory",
    "preserve-permissions -p --preserve-permissions --same-permissions",
    "absolute-names -P --absolute-names",
    "keep-old-files -k --keep-old-files",
    "to-stdout -O --to-stdout",
    "use-compress-program=shell -I --use-compress-program",
    "to-command=shell --to-command",
    "info-script=shell -F --info-script --new-volume-script",
    "checkpoint-action=value --checkpoint-action",
    "checkpoint? --checkpoint",
    "files-from=path -T --files-from",
    "exclude-from=path -X --exclude-from",
    "exclude=value --exclude",
    "dereference -h --dereference",
    "touch -m --touch",
    "verify -W --verify",
    "unlink-first -U --unlink-first",
    "recursive-unlink --recursive-unlink",
    "remove-files --remove-files",
    "overwrite --overwrite",
    "sparse -S --sparse",
    "listed-incremental=path -g --listed-incremental",
    "newer=value -N --newer --after-date",
    "blocking-factor=value -b --blocking-factor",
    "format=value -H --format",
    "starting-file=value -K --starting-file",
    "tape-length=value -L --tape-length",
    "label=value -V --label",
    "interactive -w --interactive --confirmation",
    "transform=value --transform --xform",
    "strip-components=value --strip-components",
    "owner=value --owner",
    "group=value --group",
    "mode=value --mode",
    "mtime=value --mtime",
    "one-file-system --one-file-system",
    "wildcards --wildcards",
    "null --null",
    "numeric-owner --numeric-owner",
    "same-owner --same-owner",
    "force-local --force-local",
    "rsh-command=shell --rsh-command",
    positional="paths",
)

# --- text and listing programs whose operands are files ------------------------------------------

_FILES = _spec(positional="paths")
_DATA = _spec(positional="data")

# --- network ---------------------------------------------------------------------------------------

_CURL = _spec(
    "output=write -o --output",
    "remote-name -O --remote-name",
    "remote-name-all --remote-name-all",
    "output-dir=path --output-dir",
    "create-dirs --create-dirs",
    "request=value -X --request",
    "data=data -d --data",
    "data-binary=data --data-binary",
    "data-ascii=data --data-ascii",
    "data-urlencode=data --data-urlencode",
    "data-raw=value --data-raw",
    "json=data --json",
    "form=data -F --form",
    "form-string=value --form-string",
    "upload-file=path -T --upload-file",
    "config=path -K --config",
    "cookie=value -b --cookie",
    "cookie-jar=write -c --cookie-jar",
    "dump-header=write -D --dump-header",
    "trace=write --trace",
    "trace-ascii=write --trace-ascii",
    "stderr=write --stderr",
    "cert=path -E --cert",
    "key=path --key",
    "cacert=path --cacert",
    "capath=path --capath",
    "netrc-file=path --netrc-file",
    "netrc -n --netrc",
    "header=data -H --header",
    "user=value -u --user",
    "user-agent=value -A --user-agent",
    "referer=value -e --referer",
    "proxy=host -x --proxy",
    "preproxy=host --preproxy",
    "url=host --url",
    "resolve=value --resolve",
    "connect-to=value --connect-to",
    "max-time=value -m --max-time",
    "connect-timeout=value --connect-timeout",
    "retry=value --retry",
    "range=value -r --range",
    "continue-at=value -C --continue-at",
    "limit-rate=value --limit-rate",
    "write-out=value -w --write-out",
    "quote=value -Q --quote",
    "oauth2-bearer=value --oauth2-bearer",
    "interface=value --interface",
    "socks5=host --socks5",
    "socks5-hostname=host --socks5-hostname",
    "unix-socket=path --unix-socket",
    "noproxy=value --noproxy",
    "max-redirs=value --max-redirs",
    "time-cond=value -z --time-cond",
    "location -L --location",
    "insecure -k --insecure",
    "silent -s --silent",
    "show-error -S --show-error",
    "fail -f --fail",
    "include -i --include",
    "head -I --head",
    "verbose -v --verbose",
    "get -G --get",
    "globoff -g --globoff",
    "compressed --compressed",
    positional="urls",
)
_WGET = _spec(
    "output-document=write -O --output-document",
    "output-file=write -o --output-file",
    "append-output=write -a --append-output",
    "directory-prefix=path -P --directory-prefix",
    "input-file=path -i --input-file",
    "post-file=path --post-file",
    "body-file=path --body-file",
    "post-data=value --post-data",
    "body-data=value --body-data",
    "method=value --method",
    "header=value --header",
    "user-agent=value -U --user-agent",
    "user=value --user",
    "password=value --password",
    "execute=value -e --execute",
    "tries=value -t --tries",
    "timeout=value -T --timeout",
    "wait=value -w --wait",
    "level=value -l --level",
    "accept=value -A --accept",
    "reject=value -R --reject",
    "domains=value -D --domains",
    "base=value -B --base",
    "load-cookies=path --load-cookies",
    "save-cookies=write --save-cookies",
    "ca-certificate=path --ca-certificate",
    "certificate=path --certificate",
    "private-key=path --private-key",
    "config=path --config",
    "n=value -n",
    "recursive -r --recursive",
    "mirror,recursive -m --mirror",
    "quiet -q --quiet",
    "verbose -v --verbose",
    "continue -c --continue",
    "timestamping -N --timestamping",
    "page-requisites -p --page-requisites",
    "convert-links -k --convert-links",
    "background -b --background",
    "span-hosts -H --span-hosts",
    "no-check-certificate --no-check-certificate",
    "spider --spider",
    positional="urls",
)
_SSH = _spec(
    "B=value -B",
    "bind-address=value -b",
    "cipher=value -c",
    "dynamic-forward=value -D",
    "log-file=write -E",
    "escape-char=value -e",
    "config=path -F",
    "pkcs11=value -I",
    "identity=path -i",
    "jump=host -J",
    "local-forward=value -L",
    "login=value -l",
    "mac=value -m",
    "control=value -O",
    "option=value -o",
    "port=value -p",
    "query=value -Q",
    "remote-forward=value -R",
    "control-path=path -S",
    "stdio-forward=value -W",
    "tunnel=value -w",
    "ipv4 -4",
    "ipv6 -6",
    "agent-forwarding -A",
    "compression -C",
    "background -f",
    "no-command -N",
    "no-stdin -n",
    "quiet -q",
    "subsystem -s",
    "no-tty -T",
    "tty -t",
    "verbose -v",
    "x11 -X",
    "trusted-x11 -Y",
    "G -G",
    "g -g",
    "K -K",
    "k -k",
    "M -M",
    "V -V",
    "x -x",
    "y -y",
    "a -a",
    positional="host_first",
    permute=False,
)
_SCP = _spec(
    "cipher=value -c",
    "config=path -F",
    "identity=path -i",
    "jump=host -J",
    "limit=value -l",
    "option=value -o",
    "port=value -P",
    "program=shell -S",
    "D=value -D",
    "X=value -X",
    "recursive -r",
    "preserve -p",
    "quiet -q",
    "verbose -v",
    "compression -C",
    "batch -B",
    "three -3",
    "ipv4 -4",
    "ipv6 -6",
    "agent-forwarding -A",
    "legacy -O",
    "R -R",
    "T -T",
    positional="remote",
)
_SFTP = _spec(
    "batchfile=path -b",
    "buffer=value -B",
    "cipher=value -c",
    "config=path -F",
    "identity=path -i",
    "jump=host -J",
    "limit=value -l",
    "option=value -o",
    "port=value -P",
    "requests=value -R",
    "subsystem=value -s",
    "program=shell -S",
    "D=value -D",
    "X=value -X",
    "recursive -r",
    "preserve -p",
    "quiet -q",
    "verbose -v",
    "compression -C",
    "ipv4 -4",
    "ipv6 -6",
    "agent-forwarding -A",
    "N -N",
    "f -f",
    positional="host_first",
    permute=False,
)
_RSYNC = _spec(
    "archive,recursive -a --archive",
    "recursive -r --recursive",
    "verbose -v --verbose",
    "quiet -q --quiet",
    "compress -z --compress",
    "rsh=shell -e --rsh",
    "rsync-path=value --rsync-path",
    "dry-run -n --dry-run",
    "update -u --update",
    "checksum -c --checksum",
    "human-readable -h --human-readable",
    "hard-links -H --hard-links",
    "links -l --links",
    "copy-links -L --copy-links",
    "perms -p --perms",
    "times -t --times",
    "group -g --group",
    "owner -o --owner",
    "devices-specials -D",
    "one-file-system -x --one-file-system",
    "sparse -S --sparse",
    "whole-file -W --whole-file",
    "backup -b --backup",
    "relative -R --relative",
    "dirs -d --dirs",
    "itemize-changes -i --itemize-changes",
    "partial-progress -P",
    "delete --delete",
    "delete-before --delete-before",
    "delete-during --delete-during --del",
    "delete-delay --delete-delay",
    "delete-after --delete-after",
    "delete-excluded --delete-excluded",
    "remove-source-files --remove-source-files",
    "force --force",
    "progress --progress",
    "stats --stats",
    "inplace --inplace",
    "existing --existing",
    "ignore-existing --ignore-existing",
    "mkpath --mkpath",
    "exclude=value --exclude",
    "include=value --include",
    "filter=value -f --filter",
    "exclude-from=path --exclude-from",
    "include-from=path --include-from",
    "files-from=path --files-from",
    "password-file=path --password-file",
    "backup-dir=path --backup-dir",
    "partial-dir=path --partial-dir",
    "temp-dir=path -T --temp-dir",
    "log-file=write --log-file",
    "link-dest=path --link-dest",
    "compare-dest=path --compare-dest",
    "copy-dest=path --copy-dest",
    "port=value --port",
    "bwlimit=value --bwlimit",
    "chmod=value --chmod",
    "chown=value --chown",
    "info=value --info",
    "out-format=value --out-format",
    "max-size=value --max-size",
    "min-size=value --min-size",
    "timeout=value --timeout",
    "contimeout=value --contimeout",
    "suffix=value --suffix",
    positional="remote",
)
_NC = _spec(
    "local-port=value -p",
    "source=value -s",
    "wait=value -w",
    "proxy=host -x",
    "proxy-protocol=value -X",
    "interval=value -i",
    "quit=value -q",
    "exec=path -e",
    "command=shell -c",
    "listen -l",
    "udp -u",
    "zero -z",
    "verbose -v",
    "numeric -n",
    "keep-open -k",
    "ipv4 -4",
    "ipv6 -6",
    positional="host_first",
)

# --- process control -------------------------------------------------------------------------------

# `kill -9`, `kill -KILL`, `kill -SIGKILL`, `kill -s KILL`, `kill -n 9` all become the flag "KILL".
SIGNALS: Mapping[str, str] = {
    "1": "HUP",
    "2": "INT",
    "3": "QUIT",
    "6": "ABRT",
    "9": "KILL",
    "10": "USR1",
    "12": "USR2",
    "13": "PIPE",
    "14": "ALRM",
    "15": "TERM",
    "17": "CHLD",
    "18": "CONT",
    "19": "STOP",
    "20": "TSTP",
}
SIGNAL_PROGRAMS: frozenset[str] = frozenset({"kill", "pkill", "killall", "pgrep"})
_KILL = _spec(
    "signal=value -s --signal",
    "n=value -n",
    "list? -l --list",
    "L -L --table",
    "full -f --full",
    "exact -x --exact",
    "oldest -o --oldest",
    "user=value -u --euid --user",
    "parent=value -P --parent",
    "interactive -i --interactive",
    "quiet -q --quiet",
    positional="data",
)

# --- wrappers: programs that run the rest of their arguments as a command -------------------------


@dataclass(frozen=True, slots=True)
class WrapperSpec:
    options: ProgramSpec
    skip: int = 0  # operands consumed before the command (timeout DURATION, chroot NEWROOT)
    privileged: bool = False
    # Options after which no command runs (`command -v rm` only looks rm up).
    no_command: frozenset[str] = frozenset()
    # The remaining words are joined with spaces and run by `sh -c` (watch), unless one of these.
    shell_string: bool = False
    exec_flags: frozenset[str] = frozenset()


def _wrapper(*groups: str, **kw: object) -> WrapperSpec:
    return WrapperSpec(options=_spec(*groups, permute=False), **kw)  # type: ignore[arg-type]


WRAPPERS: Mapping[str, WrapperSpec] = {
    "sudo": _wrapper(
        "user=value -u --user",
        "group=value -g --group",
        "prompt=value -p --prompt",
        "close-from=value -C --close-from",
        "role=value -r --role",
        "type=value -t --type",
        "other-user=value -U --other-user",
        "chdir=path -D --chdir",
        "chroot=path -R --chroot",
        "command-timeout=value -T --command-timeout",
        "host=value --host",
        "preserve-env? -E --preserve-env",
        "set-home -H --set-home",
        "login -i --login",
        "shell -s --shell",
        "non-interactive -n --non-interactive",
        "stdin -S --stdin",
        "askpass -A --askpass",
        "background -b --background",
        "edit -e --edit",
        "list -l --list",
        "validate -v --validate",
        "reset-timestamp -k --reset-timestamp",
        "remove-timestamp -K --remove-timestamp",
        "version -V --version",
        "help -h --help",
        "preserve-groups -P --preserve-groups",
        privileged=True,
        no_command=frozenset({"list", "validate", "version", "help", "remove-timestamp"}),
    ),
    "doas": _wrapper("user=value -u", "config=path -C", "n -n", "shell -s", "L -L", privileged=True),
    "pkexec": _wrapper(
        "user=value --user",
        "disable-internal-agent --disable-internal-agent",
        "keep-cwd --keep-cwd",
        privileged=True,
    ),
    "run0": _wrapper(
        "user=value -u --user",
        "group=value -g --group",
        "chdir=path -D --chdir",
        "setenv=value --setenv",
        "nice=value --nice",
        "unit=value --unit",
        "property=value --property",
        "description=value --description",
        "slice=value --slice",
        privileged=True,
    ),
    "env": _wrapper(
        "ignore-environment -i --ignore-environment",
        "null -0 --null",
        "unset=value -u --unset",
        "chdir=path -C --chdir",
        "split-string=value -S --split-string",
        "debug -v --debug",
        "default-signal? --default-signal",
        "ignore-signal? --ignore-signal",
        "block-signal? --block-signal",
    ),
    "nice": _wrapper("adjustment=value -n --adjustment"),
    "ionice": _wrapper(
        "class=value -c --class",
        "classdata=value -n --classdata",
        "pid=value -p --pid",
        "pgid=value -P --pgid",
        "uid=value -u --uid",
        "ignore -t --ignore",
        no_command=frozenset({"pid", "pgid", "uid"}),
    ),
    "timeout": _wrapper(
        "signal=value -s --signal",
        "kill-after=value -k --kill-after",
        "preserve-status --preserve-status",
        "foreground --foreground",
        "verbose -v --verbose",
        skip=1,
    ),
    "nohup": _wrapper(),
    "command": _wrapper("p -p", "v -v", "V -V", no_command=frozenset({"v", "V"})),
    "exec": _wrapper("c -c", "l -l", "a=value -a"),
    "builtin": _wrapper(),
    "time": _wrapper(
        "portability -p --portability",
        "output=write -o --output",
        "format=value -f --format",
        "append -a --append",
        "verbose -v --verbose",
        "quiet -q --quiet",
    ),
    "stdbuf": _wrapper("input=value -i --input", "output=value -o --output", "error=value -e --error"),
    "chroot": _wrapper(
        "userspec=value --userspec", "groups=value --groups", "skip-chdir --skip-chdir", skip=1
    ),
    "busybox": _wrapper(),
    "toybox": _wrapper(),
    "setsid": _wrapper("ctty -c --ctty", "fork -f --fork", "wait -w --wait"),
    "unbuffer": _wrapper("p -p"),
    "watch": _wrapper(
        "interval=value -n --interval",
        "differences=optional -d --differences",
        "beep -b --beep",
        "color -c --color",
        "errexit -e --errexit",
        "chgexit -g --chgexit",
        "precise -p --precise",
        "no-title -t --no-title",
        "no-wrap -w --no-wrap",
        "exec -x --exec",
        "equexit=value -q --equexit",
        shell_string=True,
        exec_flags=frozenset({"exec"}),
    ),
    "coproc": _wrapper(),
    "nocache": _wrapper(),
    "fakeroot": _wrapper(),
    "torsocks": _wrapper(),
    "proxychains": _wrapper("config=path -f", "quiet -q"),
    "proxychains4": _wrapper("config=path -f", "quiet -q"),
    "caffeinate": _wrapper("d -d", "i -i", "m -m", "s -s", "u -u", "timeout=value -t", "pid=value -w"),
    "catchsegv": _wrapper(),
    "strace": _wrapper(
        "output=write -o --output",
        "expr=value -e",
        "pid=value -p --attach",
        "strsize=value -s --string-limit",
        "user=value -u --user",
        "env=value -E --env",
        "a=value -a",
        "b=value -b",
        "I=value -I",
        "O=value -O",
        "P=path -P",
        "S=value -S",
        "X=value -X",
        "follow-forks -f --follow-forks",
        "ff --output-separately",
        "count -c",
        "q -q",
        "v -v",
        "T -T",
        "t -t",
        "y -y",
        no_command=frozenset({"pid"}),
    ),
    "ltrace": _wrapper(
        "output=write -o --output",
        "expr=value -e",
        "pid=value -p",
        "strsize=value -s",
        "user=value -u",
        "a=value -a",
        "n=value -n",
        "follow-forks -f",
        "count -c",
        no_command=frozenset({"pid"}),
    ),
    "taskset": _wrapper("cpu-list -c --cpu-list", "all-tasks -a --all-tasks", "pid -p --pid", skip=1),
    "chrt": _wrapper(
        "all-tasks -a --all-tasks",
        "batch -b --batch",
        "deadline -d --deadline",
        "fifo -f --fifo",
        "idle -i --idle",
        "other -o --other",
        "rr -r --rr",
        "reset-on-fork -R --reset-on-fork",
        "sched-runtime=value -T --sched-runtime",
        "sched-period=value -P --sched-period",
        "sched-deadline=value -D --sched-deadline",
        "verbose -v --verbose",
        skip=1,
    ),
    "faketime": _wrapper("f -f", "m -m", "exclude-monotonic --exclude-monotonic", skip=1),
    "firejail": _wrapper(),
    "numactl": _wrapper(
        "interleave=value -i --interleave",
        "preferred=value --preferred",
        "membind=value -m --membind",
        "cpunodebind=value -N --cpunodebind",
        "physcpubind=value -C --physcpubind",
        "localalloc -l --localalloc",
    ),
    "prlimit": _wrapper("pid=value -p --pid", no_command=frozenset({"pid"})),
    "cpulimit": _wrapper("limit=value -l --limit", "pid=value -p --pid", "exe=value -e --exe"),
    "xargs": _wrapper(
        "null -0 --null",
        "arg-file=path -a --arg-file",
        "delimiter=value -d --delimiter",
        "eof=value -E",
        "e=optional -e --eof",
        "replace=value -I",
        "i=optional -i --replace",
        "max-lines=value -L --max-lines",
        "l=optional -l",
        "max-args=value -n --max-args",
        "max-procs=value -P --max-procs",
        "max-chars=value -s --max-chars",
        "process-slot-var=value --process-slot-var",
        "exit -x --exit",
        "verbose -t --verbose",
        "interactive -p --interactive",
        "no-run-if-empty -r --no-run-if-empty",
        "open-tty -o --open-tty",
        "show-limits --show-limits",
    ),
    "parallel": _wrapper(
        "jobs=value -j --jobs -P",
        "arg-file=path -a --arg-file",
        "delimiter=value -d --delimiter",
        "null -0 --null",
        "keep-order -k --keep-order",
        "max-args=value -n --max-args",
        "max-lines=value -L -l --max-lines",
        "replace=value -I",
        "quote -q --quote",
        "verbose -v --verbose",
        "dry-run --dry-run",
        "halt=value --halt",
        "timeout=value --timeout",
        "joblog=write --joblog",
        "results=path --results",
        "sshlogin=host -S --sshlogin",
        "tag --tag",
        "eta --eta",
        "bar --bar",
    ),
}

# Wrappers whose command gets its arguments from stdin: the command is dynamic.
STDIN_FED: frozenset[str] = frozenset({"xargs", "parallel"})

# su-like: `su [opts] [user] -c CMD`; the command is a shell string.
SU_LIKE: Mapping[str, ProgramSpec] = {
    "su": _spec(
        "command=value -c --command",
        "session-command=value --session-command",
        "shell=value -s --shell",
        "group=value -g --group",
        "supp-group=value -G --supp-group",
        "whitelist-environment=value -w --whitelist-environment",
        "login -l --login",
        "preserve-environment -m -p --preserve-environment",
        "fast -f --fast",
        "pty -P --pty",
        positional="data",
    ),
    "runuser": _spec(
        "command=value -c --command",
        "session-command=value --session-command",
        "shell=value -s --shell",
        "group=value -g --group",
        "supp-group=value -G --supp-group",
        "user=value -u --user",
        "login -l --login",
        "preserve-environment -m -p --preserve-environment",
        "fast -f --fast",
        "pty -P --pty",
        positional="data",
    ),
    "sg": _spec("command=value -c", positional="data"),
    "flock": _spec(
        "command=value -c --command",
        "timeout=value -w --timeout --wait",
        "conflict-exit-code=value -E --conflict-exit-code",
        "shared -s --shared",
        "exclusive -x -e --exclusive",
        "unlock -u --unlock",
        "nonblock -n --nonblock --nb",
        "close -o --close",
        "no-fork -F --no-fork",
        "verbose --verbose",
        positional="data",
        permute=False,
    ),
    "script": _spec(
        "command=value -c --command",
        "append -a --append",
        "quiet -q --quiet",
        "flush -f --flush",
        "return -e --return",
        "timing=optional -t --timing",
        "log-io=write -B --log-io",
        "log-in=write -I --log-in",
        "log-out=write -O --log-out",
        positional="data",
    ),
}
PRIVILEGED_SU: frozenset[str] = frozenset({"su"})

# --- shells and interpreters ------------------------------------------------------------------------

# Shells whose -c string, stdin heredoc or eval string is bash-compatible enough to parse again.
SHELLS: frozenset[str] = frozenset(
    {"bash", "sh", "zsh", "dash", "ksh", "mksh", "ash", "yash", "posh", "rbash", "lksh", "ksh93", "oksh"}
)
SHELL_OPTIONS = _spec(
    "command -c",
    "stdin -s",
    "interactive -i",
    "login -l --login",
    "restricted -r --restricted",
    "errexit -e",
    "xtrace -x",
    "verbose -v --verbose",
    "nounset -u",
    "noexec -n",
    "allexport -a",
    "noglob -f",
    "hashall -h",
    "monitor -m",
    "privileged -p",
    "noclobber -C",
    "o=value -o",
    "O=value -O",
    "rcfile=path --rcfile --init-file",
    "norc --norc",
    "noprofile --noprofile",
    "posix --posix",
    "debugger --debugger",
    "dump-strings -D --dump-strings",
    "noediting --noediting",
    "pretty-print --pretty-print",
    permute=False,
)

# Shells with their own syntax: a -c string is code this parser cannot read.
FOREIGN_SHELLS: Mapping[str, str] = {
    "fish": "fish",
    "csh": "csh",
    "tcsh": "csh",
    "nu": "nushell",
    "elvish": "elvish",
    "xonsh": "python",
}


@dataclass(frozen=True, slots=True)
class InterpreterSpec:
    language: str
    options: ProgramSpec  # "code" kind marks the options carrying inline code
    # With no script operand (or "-"), the program is read from stdin.
    stdin_script: bool = True
    # awk-like: the first operand is the program, unless one of these options gave a file.
    code_operand: bool = False
    code_unless: frozenset[str] = frozenset()


def _interp(language: str, *groups: str, **kw: object) -> InterpreterSpec:
    return InterpreterSpec(language, _spec(*groups, permute=False), **kw)  # type: ignore[arg-type]


_PYTHON = _interp(
    "python",
    "code=code -c",
    "module=value -m",
    "W=value -W",
    "X=value -X",
    "check-hash-based-pycs=value --check-hash-based-pycs",
    "B -B",
    "E -E",
    "I -I",
    "O -O",
    "P -P",
    "s -s",
    "S -S",
    "u -u",
    "v -v",
    "b -b",
    "d -d",
    "q -q",
    "x -x",
    "R -R",
    "i -i",
)
_NODE = _interp(
    "node",
    "eval=code -e --eval",
    "print=code -p --print",
    "require=path -r --require",
    "import=value --import",
    "loader=value --loader",
    "input-type=value --input-type",
    "inspect? --inspect",
    "interactive -i --interactive",
    "check -c --check",
)
_PERL = _interp(
    "perl",
    "e=code -e",
    "E=code -E",
    "I=path -I",
    "M=value -M",
    "m=value -m",
    "i=optional -i",
    "F=value -F",
    "l=optional -l",
    "0=optional -0",
    "x=optional -x",
    "d=optional -d",
    "C=optional -C",
    "n -n",
    "p -p",
    "a -a",
    "s -s",
    "T -T",
    "t -t",
    "w -w",
    "W -W",
    "X -X",
    "c -c",
    "S -S",
    "U -U",
)
_RUBY = _interp(
    "ruby",
    "e=code -e",
    "I=path -I",
    "r=value -r",
    "C=path -C",
    "E=value -E --encoding",
    "F=value -F",
    "i=optional -i",
    "x=optional -x",
    "0=optional -0",
    "n -n",
    "p -p",
    "a -a",
    "l -l",
    "s -s",
    "w -w",
    "W=optional -W",
    "c -c",
    "d -d --debug",
)
_PHP = _interp(
    "php",
    "r=code -r",
    "B=code -B",
    "R=code -R",
    "E=code -E",
    "f=path -f",
    "c=path -c",
    "d=value -d",
    "z=path -z",
    "n -n",
    "q -q",
    "a -a",
    "l -l",
    "i -i",
    "m -m",
    "h -h",
    "v -v",
)
_LUA = _interp("lua", "e=code -e", "l=value -l", "i -i", "v -v", "E -E", "W -W")
_RSCRIPT = _interp("r", "e=code -e", "default-packages=value --default-packages", stdin_script=False)
_BUN = _interp("bun", "eval=code -e --eval", "print=code -p --print", stdin_script=False)
_OSASCRIPT = _interp("osascript", "e=code -e", "l=value -l", "s=value -s", "i -i")
_AWK = _interp(
    "awk",
    "file=path -f --file",
    "F=value -F --field-separator",
    "v=value -v --assign",
    "e=code -e --source",
    "i=path -i --include",
    "l=value -l --load",
    "E=path -E --exec",
    stdin_script=False,
    code_operand=True,
    code_unless=frozenset({"file", "E"}),
)

INTERPRETERS: Mapping[str, InterpreterSpec] = {
    **_alias(_PYTHON, "python", "python2", "python3", "pypy", "pypy3"),
    **_alias(_NODE, "node", "nodejs"),
    "perl": _PERL,
    "ruby": _RUBY,
    "php": _PHP,
    **_alias(_LUA, "lua", "luajit", "lua5.1", "lua5.2", "lua5.3", "lua5.4"),
    "Rscript": _RSCRIPT,
    "bun": _BUN,
    "osascript": _OSASCRIPT,
    **_alias(_AWK, "awk", "gawk", "mawk", "nawk", "busybox-awk"),
}
_VERSIONED = re.compile(r"(python|pypy|perl|ruby|php|node)\d+(\.\d+)*")


def interpreter(name: str) -> InterpreterSpec | None:
    spec = INTERPRETERS.get(name)
    if spec is None and (m := _VERSIONED.fullmatch(name)):
        spec = INTERPRETERS.get(m.group(1))
    return spec


# PowerShell parameters are case-insensitive and may be abbreviated to any unique prefix.
POWERSHELL: frozenset[str] = frozenset({"pwsh", "powershell", "powershell.exe", "pwsh.exe"})
POWERSHELL_CODE = re.compile(r"[-/](c|co|com|comm|comma|comman|command|e|ec|en|enc|encodedcommand.*)", re.I)
POWERSHELL_FILE = re.compile(r"[-/](f|fi|fil|file)", re.I)
POWERSHELL_VALUE = re.compile(
    r"[-/](executionpolicy|ex|ep|workingdirectory|wd|configurationname|inputformat|outputformat|of|"
    r"windowstyle|w|settingsfile|custompipename|version|v)",
    re.I,
)

# --- git ----------------------------------------------------------------------------------------

GIT_GLOBAL = _spec(
    "C=path -C",
    "c=value -c",
    "git-dir=path --git-dir",
    "work-tree=path --work-tree",
    "namespace=value --namespace",
    "exec-path? --exec-path",
    "config-env=value --config-env",
    "super-prefix=value --super-prefix",
    "paginate -p --paginate",
    "no-pager -P --no-pager",
    "bare --bare",
    "no-replace-objects --no-replace-objects",
    "literal-pathspecs --literal-pathspecs",
    "no-optional-locks --no-optional-locks",
    permute=False,
)
# `git -c KEY=VALUE`: keys whose value is a shell command that git runs.
GIT_COMMAND_KEYS: frozenset[str] = frozenset(
    {
        "core.sshcommand",
        "core.pager",
        "core.editor",
        "core.fsmonitor",
        "core.askpass",
        "core.gitproxy",
        "sequence.editor",
        "diff.external",
        "pager.log",
        "pager.diff",
        "pager.show",
        "gpg.program",
        "uploadpack.packobjectshook",
    }
)
_GIT_PATHS = _spec(positional="paths")
_GIT_COMMIT = _spec(
    "message=value -m --message",
    "file=path -F --file",
    "all -a --all",
    "amend --amend",
    "no-verify -n --no-verify",
    "author=value --author",
    "date=value --date",
    "reuse-message=value -C --reuse-message",
    "reedit-message=value -c --reedit-message",
    "fixup=value --fixup",
    "squash=value --squash",
    "signoff -s --signoff",
    "gpg-sign=optional -S --gpg-sign",
    "allow-empty --allow-empty",
    "allow-empty-message --allow-empty-message",
    "quiet -q --quiet",
    "verbose -v --verbose",
    "edit -e --edit",
    "no-edit --no-edit",
    "patch -p --patch",
    "include -i --include",
    "only -o --only",
    "untracked-files=optional -u --untracked-files",
    "template=path -t --template",
    "cleanup=value --cleanup",
    "trailer=value --trailer",
    "pathspec-from-file=path --pathspec-from-file",
    positional="paths",
)
GIT_SUBCOMMANDS: Mapping[str, ProgramSpec] = {
    "push": _spec(
        "force -f --force",
        "force-with-lease? --force-with-lease",
        "force-if-includes --force-if-includes",
        "delete -d --delete",
        "mirror --mirror",
        "all --all --branches",
        "tags --tags",
        "prune --prune",
        "set-upstream -u --set-upstream",
        "dry-run -n --dry-run",
        "no-verify --no-verify",
        "verify --verify",
        "quiet -q --quiet",
        "verbose -v --verbose",
        "atomic --atomic",
        "push-option=value -o --push-option",
        "repo=host --repo",
        "receive-pack=shell --receive-pack --exec",
        "signed? --signed",
        positional="data",
    ),
    "clean": _spec(
        "force -f --force",
        "d -d",
        "x -x",
        "X -X",
        "dry-run -n --dry-run",
        "interactive -i --interactive",
        "quiet -q --quiet",
        "exclude=value -e --exclude",
        positional="paths",
    ),
    "rm": _spec(
        "recursive -r",
        "force -f --force",
        "cached --cached",
        "dry-run -n --dry-run",
        "quiet -q --quiet",
        "ignore-unmatch --ignore-unmatch",
        "sparse --sparse",
        "pathspec-from-file=path --pathspec-from-file",
        positional="paths",
    ),
    "add": _spec(
        "all -A --all",
        "force -f --force",
        "update -u --update",
        "patch -p --patch",
        "intent-to-add -N --intent-to-add",
        "dry-run -n --dry-run",
        "verbose -v --verbose",
        "interactive -i --interactive",
        "edit -e --edit",
        "pathspec-from-file=path --pathspec-from-file",
        "chmod=value --chmod",
        positional="paths",
    ),
    "mv": _spec(
        "force -f --force", "dry-run -n --dry-run", "k -k", "verbose -v --verbose", positional="paths"
    ),
    "commit": _GIT_COMMIT,
    "checkout": _spec(
        "force -f --force",
        "b=value -b",
        "B=value -B",
        "orphan=value --orphan",
        "detach --detach",
        "track? -t --track",
        "merge -m --merge",
        "patch -p --patch",
        "quiet -q --quiet",
        "ours --ours",
        "theirs --theirs",
        "conflict=value --conflict",
        "pathspec-from-file=path --pathspec-from-file",
    ),
    "switch": _spec(
        "create=value -c --create",
        "force-create=value -C --force-create",
        "force,discard-changes -f --force --discard-changes",
        "detach -d --detach",
        "orphan=value --orphan",
        "track? -t --track",
        "merge -m --merge",
        "quiet -q --quiet",
        positional="data",
    ),
    "restore": _spec(
        "source=value -s --source",
        "staged -S --staged",
        "worktree -W --worktree",
        "patch -p --patch",
        "ours --ours",
        "theirs --theirs",
        "merge -m --merge",
        "quiet -q --quiet",
        "pathspec-from-file=path --pathspec-from-file",
        positional="paths",
    ),
    "reset": _spec(
        "hard --hard",
        "soft --soft",
        "mixed --mixed",
        "merge --merge",
        "keep --keep",
        "quiet -q --quiet",
        "patch -p --patch",
        "pathspec-from-file=path --pathspec-from-file",
    ),
    "branch": _spec(
        "delete -d --delete",
        "delete,force -D",
        "move -m --move",
        "move,force -M",
        "copy -c --copy",
        "copy,force -C",
        "force -f --force",
        "set-upstream-to=value -u --set-upstream-to",
        "remotes -r --remotes",
        "all -a --all",
        "list -l --list",
        "verbose -v --verbose",
        "quiet -q --quiet",
        "track? -t --track",
        "contains=value --contains",
        "merged? --merged",
        "format=value --format",
        "sort=value --sort",
        positional="data",
    ),
    "tag": _spec(
        "delete -d --delete",
        "force -f --force",
        "annotate -a --annotate",
        "sign -s --sign",
        "message=value -m --message",
        "file=path -F --file",
        "list -l --list",
        "local-user=value -u --local-user",
        "verify -v --verify",
        positional="data",
    ),
    "clone": _spec(
        "depth=value --depth",
        "branch=value -b --branch",
        "origin=value -o --origin",
        "bare --bare",
        "mirror --mirror",
        "recurse-submodules? --recurse-submodules --recursive",
        "shallow-submodules --shallow-submodules",
        "single-branch --single-branch",
        "no-checkout -n --no-checkout",
        "quiet -q --quiet",
        "verbose -v --verbose",
        "template=path --template",
        "reference=path --reference",
        "separate-git-dir=path --separate-git-dir",
        "config=value -c --config",
        "upload-pack=shell -u --upload-pack",
        "filter=value --filter",
        "jobs=value -j --jobs",
        "local -l --local",
        "shared -s --shared",
        positional="data",
    ),
    "fetch": _spec(
        "all --all",
        "prune -p --prune",
        "force -f --force",
        "tags -t --tags",
        "depth=value --depth",
        "quiet -q --quiet",
        "verbose -v --verbose",
        "dry-run --dry-run",
        "jobs=value -j --jobs",
        "upload-pack=shell --upload-pack",
        positional="data",
    ),
    "pull": _spec(
        "rebase? -r --rebase",
        "ff-only --ff-only",
        "no-ff --no-ff",
        "force -f --force",
        "all --all",
        "quiet -q --quiet",
        "verbose -v --verbose",
        "autostash --autostash",
        "depth=value --depth",
        "strategy=value -s --strategy",
        "strategy-option=value -X --strategy-option",
        "upload-pack=shell --upload-pack",
        positional="data",
    ),
    "rebase": _spec(
        "exec=shell -x --exec",
        "interactive -i --interactive",
        "onto=value --onto",
        "root --root",
        "continue --continue",
        "abort --abort",
        "skip --skip",
        "autosquash --autosquash",
        "autostash --autostash",
        "strategy=value -s --strategy",
        "strategy-option=value -X --strategy-option",
        "force-rebase -f --force-rebase",
        "quiet -q --quiet",
        positional="data",
    ),
    "merge": _spec(
        "message=value -m --message",
        "file=path -F --file",
        "no-ff --no-ff",
        "ff-only --ff-only",
        "squash --squash",
        "abort --abort",
        "continue --continue",
        "strategy=value -s --strategy",
        "strategy-option=value -X --strategy-option",
        "allow-unrelated-histories --allow-unrelated-histories",
        "no-verify --no-verify",
        "quiet -q --quiet",
        positional="data",
    ),
    "stash": _spec(
        "message=value -m --message",
        "include-untracked -u --include-untracked",
        "all -a --all",
        "keep-index -k --keep-index",
        "patch -p --patch",
        "staged -S --staged",
        "quiet -q --quiet",
        positional="data",
    ),
    "difftool": _spec(
        "extcmd=shell -x --extcmd",
        "tool=value -t --tool",
        "no-prompt -y --no-prompt",
        "dir-diff -d --dir-diff",
        positional="data",
    ),
    "filter-branch": _spec(
        "env-filter=shell --env-filter",
        "tree-filter=shell --tree-filter",
        "index-filter=shell --index-filter",
        "parent-filter=shell --parent-filter",
        "msg-filter=shell --msg-filter",
        "commit-filter=shell --commit-filter",
        "tag-name-filter=shell --tag-name-filter",
        "subdirectory-filter=value --subdirectory-filter",
        "original=value --original",
        "state-branch=value --state-branch",
        "d=path -d",
        "force -f --force",
        "prune-empty --prune-empty",
        positional="data",
    ),
    "config": _spec(
        "global --global",
        "system --system",
        "local --local",
        "worktree --worktree",
        "file=path -f --file",
        "unset --unset",
        "unset-all --unset-all",
        "add --add",
        "get --get",
        "list -l --list",
        "type=value --type",
        "replace-all --replace-all",
        positional="data",
    ),
    "log": _spec(positional="data"),
    "show": _spec(positional="data"),
    "status": _spec("short -s --short", "branch -b --branch", "porcelain? --porcelain"),
    "diff": _spec("output=write --output"),
    "init": _spec(
        "bare --bare",
        "template=path --template",
        "separate-git-dir=path --separate-git-dir",
        "initial-branch=value -b --initial-branch",
        "quiet -q --quiet",
        positional="paths",
    ),
    "apply": _spec("directory=path --directory", "reverse -R --reverse", "index --index", positional="paths"),
    "am": _spec(positional="paths"),
    "archive": _spec(
        "output=write -o --output",
        "format=value --format",
        "prefix=value --prefix",
        "remote=host --remote",
        positional="data",
    ),
    "worktree": _spec("force -f --force", "b=value -b", "B=value -B", "detach --detach"),
    "submodule": _spec("quiet -q --quiet", "recursive --recursive", positional="data"),
    "remote": _spec(
        "verbose -v --verbose", "fetch -f", "tags --tags", "t=value -t", "m=value -m", positional="data"
    ),
    "ls-remote": _spec(
        "heads --heads", "tags -t --tags", "refs --refs", "quiet -q --quiet", positional="data"
    ),
    "update-ref": _spec("delete -d", "no-deref --no-deref", "message=value -m", positional="data"),
    "gc": _spec(
        "aggressive --aggressive", "prune? --prune", "auto --auto", "quiet -q --quiet", positional="data"
    ),
    "reflog": _spec(
        "expire? --expire", "all --all", "expire-unreachable? --expire-unreachable", positional="data"
    ),
    "cherry-pick": _spec(
        "no-commit -n --no-commit", "edit -e --edit", "mainline=value -m", positional="data"
    ),
    "revert": _spec("no-commit -n --no-commit", "edit -e --edit", "mainline=value -m", positional="data"),
}
# Subcommands whose operand at this index names a remote (a URL or [user@]host:path).
GIT_REMOTE_OPERAND: Mapping[str, int] = {"clone": 0, "fetch": 0, "pull": 0, "push": 0, "ls-remote": 0}

# --- find -------------------------------------------------------------------------------------------

# Options before the start paths.
FIND_LEADING: frozenset[str] = frozenset({"-H", "-L", "-P"})
FIND_LEADING_VALUE: frozenset[str] = frozenset({"-D"})
# Primaries that take one argument; -fprintf takes two.
FIND_VALUE: frozenset[str] = frozenset(
    {
        "name",
        "iname",
        "path",
        "ipath",
        "wholename",
        "iwholename",
        "regex",
        "iregex",
        "regextype",
        "lname",
        "ilname",
        "type",
        "xtype",
        "user",
        "group",
        "uid",
        "gid",
        "perm",
        "size",
        "mtime",
        "atime",
        "ctime",
        "mmin",
        "amin",
        "cmin",
        "used",
        "links",
        "inum",
        "samefile",
        "newer",
        "anewer",
        "cnewer",
        "maxdepth",
        "mindepth",
        "printf",
        "fstype",
        "context",
        "files0-from",
    }
)
FIND_PATH_VALUE: frozenset[str] = frozenset({"samefile", "newer", "anewer", "cnewer", "files0-from"})
FIND_WRITE_VALUE: frozenset[str] = frozenset({"fprint", "fprint0", "fls", "fprintf"})
FIND_EXEC: frozenset[str] = frozenset({"exec", "execdir", "ok", "okdir"})

# --- everything else --------------------------------------------------------------------------------

PROGRAMS: Mapping[str, ProgramSpec] = {
    "rm": _RM,
    "cp": _CP,
    "mv": _MV,
    "chmod": _CHMOD,
    "chown": _CHOWN,
    "chgrp": _CHOWN,
    "ln": _LN,
    "touch": _TOUCH,
    "mkdir": _MKDIR,
    "rmdir": _RMDIR,
    "truncate": _TRUNCATE,
    "shred": _SHRED,
    "install": _INSTALL,
    "tee": _TEE,
    "ls": _LS,
    **_alias(_GREP, "grep", "egrep", "fgrep", "zgrep"),
    "rg": _RG,
    "sed": _SED,
    "tar": _TAR,
    "unlink": _FILES,
    "sudoedit": _FILES,
    **_alias(
        _FILES, "cat", "head", "tail", "less", "more", "wc", "stat", "file", "du", "readlink", "realpath"
    ),
    **_alias(_FILES, "source", ".", "cd", "pushd", "vi", "vim", "nvim", "nano", "emacs", "zip", "unzip"),
    **_alias(
        _FILES, "md5sum", "sha1sum", "sha256sum", "sha512sum", "cmp", "diff", "patch", "mount", "umount"
    ),
    **_alias(
        _DATA, "echo", "printf", "true", "false", ":", "sleep", "yes", "seq", "expr", "test", "[", "date"
    ),
    **_alias(_DATA, "set", "shopt", "exit", "return", "wait", "jobs", "fg", "bg", "type", "hash", "which"),
    **_alias(_DATA, "basename", "dirname", "export", "read", "let", "shift", "getopts", "alias", "trap"),
    "curl": _CURL,
    "wget": _WGET,
    "ssh": _SSH,
    "scp": _SCP,
    "sftp": _SFTP,
    "rsync": _RSYNC,
    **_alias(_NC, "nc", "ncat", "netcat"),
    **_alias(_spec(positional="host_first"), "telnet", "ftp", "mosh", "ping", "ping6", "traceroute", "mtr"),
    **_alias(_spec(positional="host_first"), "whois", "nslookup", "host", "tracepath"),
    **_alias(_KILL, "kill", "pkill", "killall", "pgrep"),
}
DEFAULT = _spec()

# `[user@]host:path` (scp, rsync, git's scp-like URLs); a "/" before the ":" makes it a local path.
REMOTE_RE = re.compile(r"(?:[^@/:\s]+@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?!//)")
