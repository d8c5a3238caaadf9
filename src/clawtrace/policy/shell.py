"""Turn a shell command line into structured facts for the policy engine.

``normalise(text, cwd=..., home=...)`` parses the text with tree-sitter-bash and
reports every simple command that could run: in lists, pipelines, subshells,
``$( )``, backticks, process substitutions, control-flow bodies, functions,
heredocs fed to a shell, and strings run by ``bash -c`` / ``eval`` / ``su -c``
/ ``find -exec`` / ``xargs`` and other wrappers. For each it gives the program,
its canonical flags, the paths and hosts it targets, the files it writes, and
whether it is privileged, dynamic or runs inline code. It never touches the
file system, runs nothing and keeps no state between calls.

Safety comes first: whenever the text cannot be read with certainty the
facts say so (``error`` for text that does not parse, ``dynamic`` for values
only known at run time), so a policy can fail closed. In particular:

* cwd is tracked through ``cd`` / ``pushd``; a ``cd`` that may have failed
  (``cd x; rm y``) leaves both directories as candidates, and relative paths are
  resolved against each. A cwd that cannot be known makes relative paths
  dynamic.
* Variables assigned in the text are tracked, including along ``&&`` / ``||``
  / ``if`` / loop branches; where branches disagree the value becomes unknown.
  Unquoted expansions are word-split (``X="-rf /"; rm $X`` is ``rm -rf /``) and
  braces expanded (``rm -rf {/,x}``).
* A program appearing inside another string (``bash -c``, ``eval``, a heredoc
  fed to a shell) whose text is only known at run time adds a fact with
  ``dynamic=True`` and ``inline_code`` naming the shell.

Known limits (a policy should treat the relevant facts as opaque):

* Inline code for other languages (``python -c``, ``node -e``, ``perl -e``,
  ``ruby -e``, ``php -r``, ``awk`` programs, ``osascript -e``, PowerShell,
  ``fish -c``...) is not parsed: the fact has ``inline_code`` set and nothing
  more is known about what that code does. The same holds for scripts run
  from files (``bash script.sh``, ``source x``, ``python x.py``): their path is
  reported, not their content. ``source`` also makes the cwd and every variable
  unknown afterwards.
* Remote commands (``ssh host CMD``, ``docker exec``, ``kubectl exec``) are
  reported as data of the local program, not as commands.
* No file system access: symlinks are not resolved, globs are kept as
  patterns (``/*``), and a ``cd`` into a missing directory is assumed possible.
* Aliases are not expanded at their use; their definitions are parsed as
  commands instead (``alias x='rm -rf /'`` reports the rm).
* Writes to ``/dev/null``, ``/dev/stdout``, ``/dev/stderr``, ``/dev/tty`` and
  ``/dev/fd/N`` are not reported.
* Programs are identified by name: ``./rm`` or a ``PATH`` change can make a
  name run something else, so a policy should not trust a name it allows to be
  the system's program.
* Only bash syntax is understood; zsh/ksh specifics parse as bash.
* Input over 1 MiB, more than 1000 commands, more than 12 levels of nested
  ``bash -c`` / ``eval`` / function calls, or more than 5000 statements to
  walk (loops are walked twice, functions at each call) set ``error``.
"""

from __future__ import annotations

import itertools
import posixpath
import re
import shlex
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

import tree_sitter_bash
from tree_sitter import Language, Node, Parser, Query, QueryCursor

from clawtrace.policy import programs as P

__all__ = ["CommandFact", "ShellFacts", "normalise"]


@dataclass(frozen=True, slots=True)
class CommandFact:
    program: str  # basename ("rm" for /bin/rm); "" when the program itself is dynamic
    args: tuple[str, ...]  # words after the program, after unwrapping, quotes removed
    flags: frozenset[str]  # canonical per program (rm -rf == --recursive --force -> recursive, force)
    paths: tuple[str, ...]  # target paths, absolute and normalised
    hosts: tuple[str, ...]  # network hosts the command talks to
    privileged: bool  # reached through sudo / doas / su -c / pkexec
    dynamic: bool  # program or a target is only known at run time
    inline_code: str | None  # language of inline code a parser can't see into ("python", "node"...)
    via: tuple[str, ...]  # wrappers unwrapped to reach it, outermost first
    writes: tuple[str, ...]  # files written by redirections, tee and output options


@dataclass(frozen=True, slots=True)
class ShellFacts:
    source: str
    commands: tuple[CommandFact, ...]  # every simple command anywhere in the text
    error: str | None  # set when the text does not parse: callers fail closed


def normalise(command: str, *, cwd: str, home: str, env: Mapping[str, str] | None = None) -> ShellFacts:
    """Facts about every command in ``command``, run from ``cwd`` by a user whose home is ``home``.

    ``env`` is the environment the command would run with; without it every
    ``$VAR`` other than ``$HOME`` and ``$PWD`` is unknown (dynamic).
    """
    if not command.strip():
        return ShellFacts(command, (), None)
    if len(command) > _MAX_SOURCE:
        return ShellFacts(command, (), f"command longer than {_MAX_SOURCE} characters")
    walker = _Walker(home=_norm(home) if home.startswith("/") else "/", env=env)
    start = _norm(cwd) if cwd.startswith("/") else None
    scope = _Scope(cwds=(start,) if start else None)
    try:
        walker.source(command, scope, _TOP, "")
    except _TooComplex as exc:
        walker.fail(str(exc))
    except RecursionError:
        walker.fail("command nested too deeply to analyse")
    except Exception as exc:  # a bug here must deny the command, not crash the caller
        walker.fail(f"internal error while analysing the command: {exc!r}")
    return ShellFacts(command, tuple(walker.facts), walker.error)


# --- limits ---------------------------------------------------------------------------------------

_MAX_SOURCE = 1 << 20
_MAX_FACTS = 1000
_MAX_DEPTH = 12  # nested bash -c / eval / function calls
_MAX_CWDS = 4  # candidate working directories before the cwd counts as unknown
_MAX_BRACE = 256  # words one brace expansion may produce
# Loops are walked twice and functions inlined at each call, so work can grow faster than the
# text; this bounds it (and so the latency of a hostile input).
_MAX_STEPS = 5_000


class _TooComplex(Exception):
    pass


# --- parser -----------------------------------------------------------------------------------------

_LANGUAGE = Language(tree_sitter_bash.language())
_PARSER = Parser(_LANGUAGE)
# A Parser is not safe to share between threads; parsing is ~10 us, so a lock costs nothing.
_PARSER_LOCK = threading.Lock()
_COMMANDS = Query(_LANGUAGE, "(command) @c")

_STATEMENTS = frozenset(
    {
        "command",
        "list",
        "pipeline",
        "subshell",
        "compound_statement",
        "redirected_statement",
        "if_statement",
        "while_statement",
        "for_statement",
        "c_style_for_statement",
        "case_statement",
        "function_definition",
        "negated_command",
        "variable_assignment",
        "variable_assignments",
        "declaration_command",
        "unset_command",
        "test_command",
    }
)
_REDIRECTS = frozenset({"file_redirect", "heredoc_redirect", "herestring_redirect"})
_WRITE_OPS = frozenset({">", ">>", "&>", "&>>", ">|", "<>", ">&", "&>|"})
_SINKS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"})
_SPLIT_WS = " \t\n"
_TAINT = "\0"  # key in _Scope.vars: every variable not listed is unknown (after `source`)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN_WORD_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)
_ARITH_ASSIGN_RE = re.compile(
    r"([A-Za-z_]\w*)\s*(?:[-+*/%&|^]|<<|>>)?=(?!=)|(?:\+\+|--)\s*([A-Za-z_]\w*)|([A-Za-z_]\w*)\s*(?:\+\+|--)"
)
_SEQ_RE = re.compile(r"(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.(-?\d+))?")
_SIGNAL_RE = re.compile(r"-(\d+|SIG[A-Z0-9+-]+|[A-Z]{3,}[0-9]*)")


# --- words ------------------------------------------------------------------------------------------


class _Field(NamedTuple):
    """One word after expansion."""

    text: str  # unresolvable parts keep their source text ("$X")
    dynamic: bool  # contains something only known at run time
    splittable: bool  # ...unquoted, so at run time it may become several words or an option


# Kinds of the pieces a word is built from; they decide tilde, brace and split handling.
_LIT, _QLIT, _EXP, _QEXP, _DYN, _QDYN = range(6)
_Piece = tuple[str, int]
_Args = list[_Field]

_Cwds = tuple[str, ...] | None
_Vars = dict[str, str | None]
_State = tuple[_Cwds, _Vars]


@dataclass(slots=True)
class _Scope:
    """What one shell process knows while the text runs; subshells get a copy."""

    cwds: _Cwds  # candidate working directories; None when unknown
    # Replaced, never mutated, so that branch states can share it.
    vars: _Vars = field(default_factory=dict)
    positional: tuple[str, ...] | None = None  # $1...; None when unknown
    functions: dict[str, Node] = field(default_factory=dict)
    exported: set[str] = field(default_factory=set)
    allexport: bool = False

    @property
    def state(self) -> _State:
        return (self.cwds, self.vars)

    @state.setter
    def state(self, value: _State) -> None:
        self.cwds, self.vars = value

    def copy(self) -> _Scope:
        return _Scope(
            self.cwds, self.vars, self.positional, dict(self.functions), set(self.exported), self.allexport
        )

    def assign(self, name: str, value: str | None) -> None:
        self.vars = {**self.vars, name: value}


class _Frame(NamedTuple):
    """How the current command was reached; fixed for everything nested under it."""

    via: tuple[str, ...] = ()
    privileged: bool = False
    root: str = ""  # chroot prefix
    depth: int = 0
    dynamic: bool = False


_TOP = _Frame()
_SCOPE_CWDS: tuple[str, ...] = ("<scope>",)  # default argument: "the scope's cwds"


class _Stdin(NamedTuple):
    kind: str  # "pipe" | "heredoc" | "herestring" | "file"
    text: str  # script text, or the file's path
    dynamic: bool


_PIPE = _Stdin("pipe", "", True)


class _Opts(NamedTuple):
    flags: set[str]
    operands: list[_Field]
    values: list[tuple[P.Option | None, _Field, str]]  # (option, value, spelling); None for unknown --x=y
    stop: int  # index of the first operand when options stop there (non-permuting programs)
    unknown: bool  # an option the spec does not list (digits, as in `nice -5`, are not counted)


_NOT_NORMAL = re.compile(r"//|/\.\.?(?:/|$)|/$")


def _norm(path: str) -> str:
    if not _NOT_NORMAL.search(path):
        return path  # already normal: the common case, and normpath is slow
    p = posixpath.normpath(path)
    # POSIX leaves a leading "//" implementation-defined; Linux treats it as "/".
    return "/" + p.lstrip("/") if p.startswith("//") else p


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    if not items:
        return ()
    return tuple(dict.fromkeys(items))


def _union_cwds(a: _Cwds, b: _Cwds) -> _Cwds:
    if a == ():
        return b  # () marks a state no execution reaches (after `exit`)
    if b == ():
        return a
    if a is None or b is None:
        return None
    if a == b:
        return a
    merged = _dedupe(a + b)
    return merged if len(merged) <= _MAX_CWDS else None


def _union_vars(a: _Vars, b: _Vars) -> _Vars:
    if a is b or a == b:
        return a
    out: _Vars = {}
    for k in a.keys() | b.keys():
        va, vb = a.get(k, _TAINT), b.get(k, _TAINT)
        out[k] = va if va == vb and va != _TAINT else None
    return out


def _union(*states: _State) -> _State:
    reachable = [s for s in states if s[0] != ()] or [states[0]]
    cwds, vars_ = reachable[0]
    for c, v in reachable[1:]:
        cwds, vars_ = _union_cwds(cwds, c), _union_vars(vars_, v)
    return cwds, vars_


def _widen(before: _State, after: _State) -> _State:
    """State at the top of a loop whose body changed it: whatever changed is unknown."""
    cwds = before[0] if before[0] == after[0] else None
    return cwds, _union_vars(before[1], after[1])


def _host_of(text: str, *, scheme_optional: bool = False) -> str | None:
    if "://" not in text:
        if not scheme_optional or not text or text.startswith(("-", "/", ".")):
            return None
        text = "http://" + text
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    return host.rstrip(".") or None if host else None


def _remote_host(text: str) -> str | None:
    """The host of `[user@]host:path` / `host::module` / a URL, or None for a local path."""
    if "://" in text:
        return _host_of(text)
    m = P.REMOTE_RE.match(text)
    if m is None:
        return None
    return m.group("host").strip("[]").lower()


def _pathish(text: str) -> bool:
    if not text or "://" in text or text[0] == "-":
        return False
    return text[0] in "/~" or text in (".", "..") or text.startswith(("./", "../")) or "/" in text


_ANSI_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "e": "\x1b"}
_ANSI_SIMPLE |= {"E": "\x1b", "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _ansi_c(body: str) -> str:
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        d = body[i + 1]
        i += 2
        if d in _ANSI_SIMPLE:
            out.append(_ANSI_SIMPLE[d])
        elif d in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[d]
            m = re.match(f"[0-9A-Fa-f]{{1,{width}}}", body[i:])
            if m:
                out.append(chr(min(int(m.group(), 16), 0x10FFFF)))
                i += m.end()
            else:
                out.append("\\" + d)
        elif d in "01234567":
            m = re.match(r"[0-7]{0,2}", body[i:])
            assert m is not None
            out.append(chr(int(d + m.group(), 8) & 0xFF))
            i += m.end()
        elif d == "c" and i < n:
            out.append(chr(ord(body[i]) & 0x1F))
            i += 1
        else:
            out.append("\\" + d)
    return "".join(out)


_DQ_ESCAPE = re.compile(r'\\([$`"\\\n])')
_HEREDOC_ESCAPE = re.compile(r"\\([$`\\\n])")  # unlike double quotes, \" stays as it is


def _unescape_dq(text: str, pattern: re.Pattern[str] = _DQ_ESCAPE) -> str:
    """Backslash escapes inside double quotes: only \\$ \\` \\" \\\\ and newline are special."""
    if "\\" not in text:
        return text
    return pattern.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), text)


def _brace_expand(text: str) -> list[str] | None:
    """Bash brace expansion of unquoted text; None when it would produce too many words."""
    results = [text]
    out: list[str] = []
    while results:
        s = results.pop()
        expanded = _brace_once(s)
        if expanded is None:
            out.append(s)
        else:
            results.extend(reversed(expanded))
            if len(results) + len(out) > _MAX_BRACE:
                return None
    return out


def _brace_once(s: str) -> list[str] | None:
    start = 0
    while (i := s.find("{", start)) >= 0:
        start = i + 1
        depth, commas, j = 0, [], i
        while j < len(s):
            c = s[j]
            if c == "\\":
                j += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            elif c == "," and depth == 1:
                commas.append(j)
            j += 1
        else:
            return None
        inner, prefix, suffix = s[i + 1 : j], s[:i], s[j + 1 :]
        if commas:
            bounds = [i, *commas, j]
            return [prefix + s[a + 1 : b] + suffix for a, b in itertools.pairwise(bounds)]
        if (m := _SEQ_RE.fullmatch(inner)) is not None:
            seq = _sequence(m.group(1), m.group(2), m.group(3))
            if seq is None:
                return None
            return [prefix + x + suffix for x in seq]
    return None


def _sequence(a: str, b: str, step_text: str | None) -> list[str] | None:
    step = abs(int(step_text)) if step_text else 1
    step = step or 1
    if a.lstrip("-").isdigit() and b.lstrip("-").isdigit():
        lo, hi = int(a), int(b)
        if abs(hi - lo) // step > _MAX_BRACE:
            return None
        width = max(len(a), len(b)) if (a.lstrip("-").startswith("0") or b.lstrip("-").startswith("0")) else 0
        rng = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [str(x).zfill(width) for x in rng]
    if a.isalpha() and b.isalpha():
        lo, hi = ord(a), ord(b)
        rng = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [chr(x) for x in rng]
    return None


# --- the walker -----------------------------------------------------------------------------------------


class _Walker:
    def __init__(self, home: str, env: Mapping[str, str] | None) -> None:
        self.home = home
        self.env = env
        self.facts: list[CommandFact] = []
        self.error: str | None = None
        self.src = b""
        self.visited: set[int] = set()
        # Redirections waiting for the statement they apply to (tree-sitter sometimes hangs them
        # on an enclosing list), keyed by node id: (redirect nodes, extra argument nodes).
        self.pending: dict[int, tuple[list[Node], list[Node]]] = {}
        self.writes: list[tuple[tuple[str, ...], bool]] = []  # active redirections: (paths, dynamic)
        self.stdin: _Stdin | None = None  # stdin inherited by the commands being walked
        self.defined: list[tuple[str, Node, _Scope, _Frame]] = []
        self.called: set[int] = set()
        self.steps = 0

    # -- bookkeeping

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def emit(
        self,
        program: str,
        args: Sequence[_Field],
        frame: _Frame,
        *,
        flags: Iterable[str] = (),
        paths: Iterable[str] = (),
        hosts: Iterable[str] = (),
        writes: Iterable[str] = (),
        dynamic: bool = False,
        inline: str | None = None,
        via: tuple[str, ...] | None = None,
    ) -> None:
        if self.writes:
            writes = list(writes)
            for ws, dyn in self.writes:
                writes.extend(ws)
                dynamic = dynamic or dyn
        self.facts.append(
            CommandFact(
                program,
                tuple([a.text for a in args]),
                frozenset(flags),
                _dedupe(paths),
                _dedupe(hosts),
                frame.privileged,
                dynamic or frame.dynamic,
                inline,
                frame.via if via is None else via,
                _dedupe(writes),
            )
        )
        if len(self.facts) > _MAX_FACTS:
            raise _TooComplex(f"more than {_MAX_FACTS} commands")

    def node_text(self, node: Node) -> str:
        return self.src[node.start_byte : node.end_byte].decode("utf-8", "surrogateescape")

    # -- sources and trees

    def source(self, text: str, scope: _Scope, frame: _Frame, label: str) -> None:
        """Parse and walk one piece of shell text in ``scope``."""
        if frame.depth > _MAX_DEPTH:
            self.fail(f"{label}: nested more than {_MAX_DEPTH} levels deep")
            return
        src = text.encode("utf-8", "surrogateescape")
        with _PARSER_LOCK:
            tree = _PARSER.parse(src)
        root = tree.root_node
        if root.has_error:
            self.fail(_syntax_error(root, src, label))
        saved = (self.src, self.visited, self.pending, self.defined)
        self.src, self.visited, self.pending, self.defined = src, set(), {}, []
        try:
            self.seq(root.children, scope, frame)
            # Functions that are defined but never called still count: they might be called
            # in ways the text doesn't show.
            for name, body, def_scope, def_frame in self.defined:
                if body.id not in self.called:
                    self.called.add(body.id)
                    self.stmt(body, def_scope.copy(), def_frame._replace(via=(*def_frame.via, f"{name}()")))
            # Anything a construct above did not reach still counts; it runs with an unknown cwd.
            for node in QueryCursor(_COMMANDS).captures(root).get("c", ()):
                if node.id not in self.visited:
                    unknown = scope.copy()
                    unknown.cwds = None
                    self.command(node, unknown, frame)
        finally:
            self.src, self.visited, self.pending, self.defined = saved

    # -- statements

    def seq(self, nodes: Sequence[Node], scope: _Scope, frame: _Frame) -> _State:
        """Statements run one after the other; returns the state if the last one failed."""
        fail = scope.state
        first = True
        for i, node in enumerate(nodes):
            if node.type not in _STATEMENTS:
                continue
            if not first:
                scope.state = _union(scope.state, fail)
            first = False
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            if nxt is not None and nxt.type == "&":
                self.stmt(node, scope.copy(), frame)  # background: a subshell
                fail = scope.state
            else:
                fail = self.stmt(node, scope, frame)
        return fail

    def stmt(self, node: Node, scope: _Scope, frame: _Frame) -> _State:
        """Walk one statement; afterwards scope holds the state on success, the return value on failure."""
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise _TooComplex(f"more than {_MAX_STEPS} statements to analyse")
        pending = self.pending.pop(node.id, None) if self.pending else None
        t = node.type
        if t == "command":
            return self.command(node, scope, frame, pending)
        if pending is None:
            return self._stmt(t, node, scope, frame)
        redirects, extra = pending
        if extra:
            self.fail("words after a redirection of a compound command")
        saved_stdin = self.stdin
        depth = len(self.writes)
        self.redirects(redirects, scope, frame)
        try:
            return self._stmt(t, node, scope, frame)
        finally:
            del self.writes[depth:]
            self.stdin = saved_stdin

    def _stmt(self, t: str, node: Node, scope: _Scope, frame: _Frame) -> _State:
        if t == "list":
            return self.list_(node, scope, frame)
        if t == "pipeline":
            return self.pipeline(node.children, scope, frame)
        if t == "redirected_statement":
            return self.redirected(node, scope, frame)
        if t == "subshell":
            self.seq(node.children, scope.copy(), frame)
            return scope.state
        if t == "compound_statement":
            if node.child_count and node.children[0].type == "((":
                self.arithmetic(node, scope, frame)
                return scope.state
            return self.seq(node.children, scope, frame)
        if t == "if_statement":
            return self.if_(node, scope, frame)
        if t in ("while_statement", "for_statement", "c_style_for_statement"):
            return self.loop(node, scope, frame)
        if t == "case_statement":
            return self.case(node, scope, frame)
        if t == "function_definition":
            name_node = node.child_by_field_name("name")
            body = node.child_by_field_name("body")
            if name_node is not None and body is not None:
                name = self.node_text(name_node)
                scope.functions[name] = body
                self.defined.append((name, body, scope.copy(), frame))
            return scope.state
        if t == "negated_command":
            fail = self.seq(node.children, scope, frame)
            ok = scope.state
            scope.state = fail
            return ok
        if t == "variable_assignment":
            self.assignment(node, scope, frame)
            return scope.state
        if t == "variable_assignments":
            for c in node.children:
                if c.type == "variable_assignment":
                    self.assignment(c, scope, frame)
            return scope.state
        if t == "declaration_command":
            self.declaration(node, scope, frame)
            return scope.state
        if t == "unset_command":
            self.unset(node, scope)
            return scope.state
        if t == "test_command":
            self.substitutions(node, scope, frame)
            return scope.state
        return scope.state

    def list_(self, node: Node, scope: _Scope, frame: _Frame) -> _State:
        fail: _State | None = None
        op = ";"
        for c in node.children:
            if c.type in ("&&", "||", ";", "&", "\n"):
                op = c.type
                continue
            if c.type not in _STATEMENTS:
                continue
            if fail is None:
                fail = self.stmt(c, scope, frame)
            elif op == "&&":
                fail = _union(fail, self.stmt(c, scope, frame))
            elif op == "||":
                ok = scope.state
                scope.state = fail
                fail = self.stmt(c, scope, frame)
                scope.state = _union(ok, scope.state)
            else:
                scope.state = _union(scope.state, fail)
                fail = self.stmt(c, scope, frame)
        return fail if fail is not None else scope.state

    def pipeline(self, nodes: Sequence[Node], scope: _Scope, frame: _Frame, piped: bool = False) -> _State:
        saved = self.stdin
        try:
            for c in nodes:
                if c.type in ("|", "|&"):
                    piped = True
                elif c.type in _STATEMENTS:
                    # Each element of a pipeline runs in its own subshell.
                    self.stdin = _PIPE if piped else saved
                    self.stmt(c, scope.copy(), frame)
        finally:
            self.stdin = saved
        return scope.state

    def redirected(self, node: Node, scope: _Scope, frame: _Frame) -> _State:
        body = node.child_by_field_name("body")
        redirects = [c for c in node.children if c.type in _REDIRECTS]
        extra: list[Node] = []
        for r in redirects:
            if r.type == "file_redirect":
                extra.extend(r.children_by_field_name("destination")[1:])
        if body is None:
            # A bare `> file` still creates or truncates the file.
            depth = len(self.writes)
            saved_stdin = self.stdin
            self.redirects(redirects, scope, frame)
            if extra:
                self.command_words([], extra, scope, frame, {}, self.stdin)
            else:
                self.emit(":", (), frame)
            del self.writes[depth:]
            self.stdin = saved_stdin
            fail = scope.state
        else:
            # tree-sitter hangs `a && b > f` on the list; bash applies it to b.
            target = body
            while target.type in ("list", "pipeline"):
                stmts = [c for c in target.children if c.type in _STATEMENTS]
                if not stmts:
                    break
                target = stmts[-1]
            self.pending[target.id] = (redirects, extra)
            fail = self.stmt(body, scope, frame)
            self.pending.pop(target.id, None)
        # Commands that tree-sitter nests inside a heredoc redirect: `cat <<EOF | sh`, `<<EOF && x`.
        for r in redirects:
            if r.type != "heredoc_redirect":
                continue
            op = ""
            for c in r.children:
                if c.type == "pipeline":
                    self.pipeline(c.children, scope, frame, piped=True)
                elif c.type in ("&&", "||"):
                    op = c.type
                elif c.type in _STATEMENTS and op:
                    if op == "&&":
                        fail = _union(fail, self.stmt(c, scope, frame))
                    else:
                        ok = scope.state
                        scope.state = fail
                        fail = self.stmt(c, scope, frame)
                        scope.state = _union(ok, scope.state)
        return fail

    def if_(self, node: Node, scope: _Scope, frame: _Frame) -> _State:
        ends: list[_State] = []
        fail: _State | None = self._cond_body(node.children, scope, frame, ends)
        for c in node.children:
            if c.type == "elif_clause" and fail is not None:
                scope.state = fail
                fail = self._cond_body(c.children, scope, frame, ends)
            elif c.type == "else_clause" and fail is not None:
                scope.state = fail
                self.seq(c.children, scope, frame)
                ends.append(scope.state)
                fail = None
        if fail is not None:
            ends.append(fail)
        scope.state = _union(*ends)
        return scope.state

    def _cond_body(
        self, children: Sequence[Node], scope: _Scope, frame: _Frame, ends: list[_State]
    ) -> _State:
        split = next((i for i, c in enumerate(children) if c.type == "then"), len(children))
        fail = self.seq(children[:split], scope, frame)
        self.seq(children[split:], scope, frame)
        ends.append(scope.state)
        return fail

    def loop(self, node: Node, scope: _Scope, frame: _Frame) -> _State:
        var = node.child_by_field_name("variable")
        if var is not None:
            scope.assign(self.node_text(var), None)  # loop variables are unknown, whatever the list
        before = scope.state
        start = len(self.facts)
        self._loop_pass(node, scope, frame)
        after = scope.state
        if after[0] != () and (after[0] != before[0] or after[1] != before[1]):
            # The body changes the state the next iteration starts from: walk it again from a
            # state where whatever changed is unknown.
            del self.facts[start:]
            before = _widen(before, after)
            scope.state = before
            self._loop_pass(node, scope, frame)
        scope.state = _union(before, scope.state)
        return scope.state

    def _loop_pass(self, node: Node, scope: _Scope, frame: _Frame) -> None:
        for c in node.children:
            t = c.type
            if t in _STATEMENTS:
                self.stmt(c, scope, frame)
            elif t == "do_group":
                self.seq(c.children, scope, frame)
            elif c.is_named and t not in ("variable_name", "comment"):
                # for-loop words and c-style headers: expand for their substitutions
                if node.type == "c_style_for_statement":
                    self.arithmetic(c, scope, frame)
                else:
                    self.expand(c, scope, frame)

    def case(self, node: Node, scope: _Scope, frame: _Frame) -> _State:
        value = node.child_by_field_name("value")
        if value is not None:
            self.expand(value, scope, frame)
        start = scope.state
        ends = [start]
        for item in node.children:
            if item.type != "case_item":
                continue
            scope.state = start
            self.seq(item.children, scope, frame)
            ends.append(scope.state)
        scope.state = _union(*ends)
        return scope.state

    def substitutions(self, node: Node, scope: _Scope, frame: _Frame) -> None:
        """Walk the command substitutions anywhere under ``node`` (tests, arithmetic)."""
        for c in node.children:
            if c.type in ("command_substitution", "process_substitution"):
                self.expand(c, scope, frame)
            elif c.child_count:
                self.substitutions(c, scope, frame)

    def arithmetic(self, node: Node, scope: _Scope, frame: _Frame) -> None:
        self.substitutions(node, scope, frame)
        for m in _ARITH_ASSIGN_RE.finditer(self.node_text(node)):
            scope.assign(m.group(1) or m.group(2) or m.group(3), None)

    # -- assignments

    def assignment(self, node: Node, scope: _Scope, frame: _Frame) -> tuple[str, str | None] | None:
        name_node = node.child_by_field_name("name")
        if name_node is None:
            return None
        if name_node.type != "variable_name":  # x[1]=... : arrays are not tracked
            sub = name_node.child_by_field_name("name")
            if sub is not None:
                scope.assign(self.node_text(sub), None)
            self.substitutions(node, scope, frame)
            return None
        name = self.node_text(name_node)
        value_node = node.child_by_field_name("value")
        value: str | None
        if value_node is None:
            value = ""
        elif value_node.type == "array":
            self.substitutions(value_node, scope, frame)
            value = None
        else:
            value = self.expand_string(value_node, scope, frame, assignment=True)
        if any(c.type == "+=" for c in node.children):
            old = self.lookup(name, scope)
            value = None if old is None or value is None else old + value
        scope.assign(name, value)
        return name, value

    def declaration(self, node: Node, scope: _Scope, frame: _Frame) -> None:
        keyword = node.children[0].type if node.child_count else ""
        opts = ""
        for c in node.children[1:]:
            if c.type == "word" and (t := self.node_text(c)).startswith(("-", "+")):
                opts += t[1:] if t[0] == "-" else ""
                continue
            if c.type == "variable_assignment":
                assigned = self.assignment(c, scope, frame)
                name = assigned[0] if assigned else None
                if name is not None and (set(opts) & set("aAn")):
                    scope.assign(name, None)  # arrays and namerefs are not tracked
            elif c.type == "variable_name":
                name = self.node_text(c)
            else:
                self.expand(c, scope, frame)
                continue
            if name is not None and (keyword == "export" or "x" in opts):
                scope.exported.add(name)

    def unset(self, node: Node, scope: _Scope) -> None:
        functions = False
        for c in node.children[1:]:
            text = self.node_text(c)
            if text.startswith("-"):
                functions = "f" in text
            elif functions:
                scope.functions.pop(text, None)
            elif _NAME_RE.fullmatch(text):
                scope.assign(text, "")

    def lookup(self, name: str, scope: _Scope) -> str | None:
        vars_ = scope.vars
        if name in vars_:
            return vars_[name]
        if _TAINT in vars_:
            return None
        if name == "HOME":
            return self.home
        if name == "PWD":
            return scope.cwds[0] if scope.cwds and len(scope.cwds) == 1 else None
        if self.env is not None:
            return self.env.get(name)
        return None

    # -- words

    def expand(self, node: Node, scope: _Scope, frame: _Frame) -> list[_Field]:
        t = node.type
        if t in ("word", "number"):
            text = self.node_text(node)
            if "\\" not in text and "{" not in text and not text.startswith("~"):
                return [_Field(text, False, False)]
        elif t == "raw_string":
            return [_Field(self.node_text(node)[1:-1], False, False)]
        elif t in ("simple_expansion", "string") and scope.positional is not None:
            spliced = self._splice_all(node, scope)
            if spliced is not None:
                return spliced
        pieces: list[_Piece] = []
        self.pieces(node, scope, frame, False, pieces)
        return self.fields(pieces, scope, frame)

    def expand_group(self, nodes: Sequence[Node], scope: _Scope, frame: _Frame) -> list[_Field]:
        if len(nodes) == 1:
            return self.expand(nodes[0], scope, frame)
        pieces: list[_Piece] = []
        for i, n in enumerate(nodes):
            if n.type == "$" and i + 1 < len(nodes) and nodes[i + 1].type == "string":
                continue  # $"..." (a translated string) is the string
            self.pieces(n, scope, frame, False, pieces)
        return self.fields(pieces, scope, frame)

    def expand_string(
        self, node: Node, scope: _Scope, frame: _Frame, *, assignment: bool = False
    ) -> str | None:
        """A word expanded without splitting (assignments, heredoc words); None when dynamic."""
        pieces: list[_Piece] = []
        self.pieces(node, scope, frame, False, pieces)
        if pieces and assignment and pieces[0][1] == _LIT and "~" in pieces[0][0]:
            text = pieces[0][0]
            home = self.lookup("HOME", scope)
            if home is None and (text.startswith("~") or ":~" in text):
                return None
            if text == "~" or text.startswith("~/"):
                text = (home or "") + text[1:]
            pieces[0] = (text.replace(":~/", ":" + (home or "") + "/"), _LIT)
        if any(k in (_DYN, _QDYN) for _, k in pieces):
            return None
        return "".join(s for s, _ in pieces)

    def _splice_all(self, node: Node, scope: _Scope) -> list[_Field] | None:
        """``"$@"`` / ``$@`` / ``$*`` as a whole word: one field per positional parameter."""
        inner = node
        quoted = node.type == "string"
        if quoted:
            kids = [c for c in node.children if c.type != '"']
            if len(kids) != 1 or kids[0].type != "simple_expansion":
                return None
            inner = kids[0]
        if self.node_text(inner) not in ("$@", "$*"):
            return None
        assert scope.positional is not None
        if quoted and self.node_text(inner) == "$@":
            return [_Field(p, False, False) for p in scope.positional]
        if quoted:
            return [_Field(" ".join(scope.positional), False, False)]
        return [_Field(w, False, False) for p in scope.positional for w in p.split()]

    def pieces(self, node: Node, scope: _Scope, frame: _Frame, quoted: bool, out: list[_Piece]) -> None:
        t = node.type
        if t in ("word", "number", "brace_expression", "extglob_pattern"):
            text = self.node_text(node)
            if "\\" not in text:
                out.append((text, _QLIT if quoted else _LIT))
                return
            # An escaped character is quoted: `\{a,b}` is not a brace expansion, `\~` no tilde.
            i, n = 0, len(text)
            lit: list[str] = []
            while i < n:
                c = text[i]
                if c == "\\" and i + 1 < n:
                    if lit:
                        out.append(("".join(lit), _QLIT if quoted else _LIT))
                        lit = []
                    if text[i + 1] != "\n":
                        out.append((text[i + 1], _QLIT))
                    i += 2
                else:
                    lit.append(c)
                    i += 1
            if lit:
                out.append(("".join(lit), _QLIT if quoted else _LIT))
        elif t == "raw_string":
            out.append((self.node_text(node)[1:-1], _QLIT))
        elif t == "ansi_c_string":
            out.append((_ansi_c(self.node_text(node)[2:-1]), _QLIT))
        elif t in ("string", "translated_string"):
            out.append(("", _QLIT))  # `""` is still a word
            pos = node.start_byte + (2 if t == "translated_string" else 1)
            for k in node.children:
                if k.type in ('"', "$"):
                    continue
                if k.start_byte > pos:
                    out.append((_unescape_dq(self.src[pos : k.start_byte].decode()), _QLIT))
                pos = k.end_byte
                if k.type == "string_content":
                    out.append((_unescape_dq(self.node_text(k)), _QLIT))
                else:
                    self.pieces(k, scope, frame, True, out)
            end = node.end_byte - 1
            if end > pos:
                out.append((_unescape_dq(self.src[pos:end].decode()), _QLIT))
        elif t == "concatenation":
            for k in node.children:
                self.pieces(k, scope, frame, quoted, out)
        elif t == "simple_expansion":
            text = self.node_text(node)
            value = self._param(text[1:], scope)
            self._value_piece(text, value, quoted, out)
        elif t == "expansion":
            self._expansion(node, scope, frame, quoted, out)
        elif t == "command_substitution":
            value = self._command_substitution(node, scope, frame)
            self._value_piece(self.node_text(node), value, quoted, out)
        elif t == "process_substitution":
            child = scope.copy()
            saved = self.writes
            self.writes = []
            self.seq(node.children, child, frame)
            self.writes = saved
            out.append((self.node_text(node), _QDYN))
        elif t == "arithmetic_expansion":
            self.arithmetic(node, scope, frame)
            out.append((self.node_text(node), _QDYN))
        elif t == "string_content":
            out.append((_unescape_dq(self.node_text(node)), _QLIT))
        else:
            out.append((self.node_text(node), _QLIT if quoted else _LIT))

    @staticmethod
    def _value_piece(source: str, value: str | None, quoted: bool, out: list[_Piece]) -> None:
        if value is None:
            out.append((source, _QDYN if quoted else _DYN))
        else:
            out.append((value, _QEXP if quoted else _EXP))

    def _param(self, name: str, scope: _Scope) -> str | None:
        if name.isdigit():
            pos = scope.positional
            if pos is None or name == "0":
                return None
            i = int(name)
            return pos[i - 1] if i <= len(pos) else ""
        if name in ("@", "*"):
            return None if scope.positional is None else " ".join(scope.positional)
        if name == "#":
            return None if scope.positional is None else str(len(scope.positional))
        if not _NAME_RE.fullmatch(name):
            return None  # $? $$ $! $- $_
        return self.lookup(name, scope)

    def _expansion(self, node: Node, scope: _Scope, frame: _Frame, quoted: bool, out: list[_Piece]) -> None:
        kids = node.children[1:-1]  # between "${" and "}"
        source = self.node_text(node)
        if not kids:
            out.append((source, _QDYN if quoted else _DYN))
            return
        head = kids[0]
        if head.type in ("variable_name", "special_variable_name") and len(kids) == 1:
            self._value_piece(source, self._param(self.node_text(head), scope), quoted, out)
            return
        if head.type == "#" and len(kids) == 2 and kids[1].type == "variable_name":
            value = self._param(self.node_text(kids[1]), scope)
            self._value_piece(source, None if value is None else str(len(value)), quoted, out)
            return
        op = kids[1].type if len(kids) > 1 else ""
        if head.type == "variable_name" and op in (":-", "-", ":=", "=", ":+", "+"):
            value = self._param(self.node_text(head), scope)
            word: list[_Piece] = []
            for c in kids[2:]:
                self.pieces(c, scope, frame, quoted, word)
            if value is None:
                out.append((source, _QDYN if quoted else _DYN))
            elif op in (":-", ":=", "-", "=") and value == "":
                out.extend(word)
            elif op in (":+", "+"):
                if value != "":
                    out.extend(word)
            else:
                self._value_piece(source, value, quoted, out)
            return
        # Substrings, pattern replacement, case changes, indirection: not evaluated.
        self.substitutions(node, scope, frame)
        out.append((source, _QDYN if quoted else _DYN))

    def _command_substitution(self, node: Node, scope: _Scope, frame: _Frame) -> str | None:
        inner = [c for c in node.children if c.type in _STATEMENTS]
        child = scope.copy()
        saved_writes, saved_stdin = self.writes, self.stdin
        self.writes = []
        try:
            self.seq(node.children, child, frame)
        finally:
            self.writes, self.stdin = saved_writes, saved_stdin
        # `$(pwd)` is common in agent commands and easy to know.
        if len(inner) == 1 and inner[0].type == "command":
            words = [self.node_text(c) for c in inner[0].children]
            if words and words[0] == "pwd" and set(words[1:]) <= {"-L", "-P"}:
                return self.lookup("PWD", scope)
        return None

    def fields(self, pieces: list[_Piece], scope: _Scope, frame: _Frame) -> list[_Field]:
        if not pieces:
            return []
        # Tilde expansion: an unquoted leading ~ up to the first slash.
        text0, kind0 = pieces[0]
        if kind0 == _LIT and text0.startswith("~"):
            slash = text0.find("/")
            if slash >= 0 or len(pieces) == 1:
                prefix = text0[1:slash] if slash >= 0 else text0[1:]
                rest = text0[slash:] if slash >= 0 else ""
                if prefix == "":
                    value = self.lookup("HOME", scope)
                elif prefix == "+":
                    value = self.lookup("PWD", scope)
                else:
                    value = None  # ~user, ~-: not known without the system
                head: _Piece = (text0[: len(prefix) + 1], _QDYN) if value is None else (value, _QEXP)
                pieces = [head, *([(rest, _LIT)] if rest else []), *pieces[1:]]
        # Brace expansion, on unquoted literal text only.
        if any(k == _LIT and "{" in s for s, k in pieces):
            if all(k in (_LIT, _QEXP) and (k == _LIT or "{" not in s) for s, k in pieces):
                words = _brace_expand("".join(s for s, _ in pieces))
                if words is None:
                    return [_Field("".join(s for s, _ in pieces), True, True)]
                return [_Field(w, False, False) for w in words]
            lits = "".join(s for s, k in pieces if k == _LIT)
            if "," in lits or ".." in lits:
                # Braces mixed with quotes or expansions: not worth modelling, so unknown.
                return [_Field("".join(s for s, _ in pieces), True, True)]
        # Word splitting of unquoted expansions.
        ifs_known = "IFS" not in scope.vars
        out: list[_Field] = []
        cur: list[str] = []
        dyn = split = has = False
        for s, k in pieces:
            if k == _EXP and not ifs_known:
                k = _DYN
            if k == _EXP:
                if not s:
                    continue
                parts = s.split()
                if s[0] in _SPLIT_WS and has:
                    out.append(_Field("".join(cur), dyn, split))
                    cur, dyn, split, has = [], False, False, False
                for j, p in enumerate(parts):
                    if j:
                        out.append(_Field("".join(cur), dyn, split))
                        cur, dyn, split, has = [], False, False, False
                    cur.append(p)
                    has = True
                if parts and s[-1] in _SPLIT_WS:
                    out.append(_Field("".join(cur), dyn, split))
                    cur, dyn, split, has = [], False, False, False
            else:
                cur.append(s)
                has = True
                if k == _DYN:
                    dyn = split = True
                elif k == _QDYN:
                    dyn = True
        if has:
            out.append(_Field("".join(cur), dyn, split))
        return out

    # -- redirections

    def redirects(self, nodes: Sequence[Node], scope: _Scope, frame: _Frame) -> None:
        """Apply redirections: push written files onto self.writes, set self.stdin."""
        writes: list[str] = []
        dynamic = False
        for r in nodes:
            if r.type == "file_redirect":
                op = next((c.type for c in r.children if not c.is_named), "")
                dests = r.children_by_field_name("destination")
                if not dests:
                    continue
                dest = dests[0]
                if (op in (">&", "<&") and dest.type == "number") or self.node_text(dest) == "-":
                    continue  # fd duplication or close
                fields = self.expand(dest, scope, frame)
                if len(fields) != 1 or fields[0].dynamic:
                    dynamic = True
                    continue
                resolved = self.resolve(fields[0].text, scope, frame)
                if resolved is None:
                    dynamic = True
                elif op in _WRITE_OPS:
                    writes.extend(p for p in resolved if p not in _SINKS and not p.startswith("/dev/fd/"))
                elif op == "<" and resolved:
                    self.stdin = _Stdin("file", resolved[0], False)
            elif r.type == "herestring_redirect":
                value = next((c for c in r.children if c.is_named), None)
                text = None if value is None else self.expand_string(value, scope, frame)
                self.stdin = _Stdin("herestring", (text or "") + "\n", text is None)
            elif r.type == "heredoc_redirect":
                text, dyn = self.heredoc(r, scope, frame)
                self.stdin = _Stdin("heredoc", text, dyn)
                nested = [c for c in r.children if c.type in _REDIRECTS]
                if nested:
                    self.redirects(nested, scope, frame)
        if writes or dynamic:
            self.writes.append((_dedupe(writes), dynamic))

    def heredoc(self, node: Node, scope: _Scope, frame: _Frame) -> tuple[str, bool]:
        start = next((c for c in node.children if c.type == "heredoc_start"), None)
        body = next((c for c in node.children if c.type == "heredoc_body"), None)
        if body is None:
            return "", False
        strip_tabs = any(c.type == "<<-" for c in node.children)
        delimiter = self.node_text(start) if start is not None else ""
        dynamic = False
        if any(q in delimiter for q in "'\"\\"):
            text = self.node_text(body)  # quoted delimiter: the body is literal
        else:
            parts: list[str] = []
            pos = body.start_byte
            for c in body.children:
                if c.start_byte > pos:
                    parts.append(_unescape_dq(self.src[pos : c.start_byte].decode(), _HEREDOC_ESCAPE))
                pos = c.end_byte
                if c.type == "heredoc_content":
                    parts.append(_unescape_dq(self.node_text(c), _HEREDOC_ESCAPE))
                    continue
                pieces: list[_Piece] = []
                self.pieces(c, scope, frame, True, pieces)
                for s, k in pieces:
                    dynamic = dynamic or k in (_DYN, _QDYN)
                    parts.append(s)
            if body.end_byte > pos:
                parts.append(_unescape_dq(self.src[pos : body.end_byte].decode(), _HEREDOC_ESCAPE))
            text = "".join(parts)
        if strip_tabs:
            text = "\n".join(line.lstrip("\t") for line in text.split("\n"))
        return text, dynamic

    # -- paths

    def resolve(
        self, text: str, scope: _Scope, frame: _Frame, cwds: _Cwds = _SCOPE_CWDS
    ) -> tuple[str, ...] | None:
        """Absolute normalised path(s) for ``text``; None when the cwd it depends on is unknown."""
        if not text:
            return ()
        if text.startswith("/"):
            out: tuple[str, ...] = (_norm(text),)
        else:
            base = scope.cwds if cwds is _SCOPE_CWDS else cwds
            if not base:
                return None
            out = tuple(_norm(posixpath.join(c, text)) for c in base)
        if frame.root:
            out = tuple(_norm(frame.root + p) for p in out)
        return out

    # -- simple commands

    def command(
        self,
        node: Node,
        scope: _Scope,
        frame: _Frame,
        pending: tuple[list[Node], list[Node]] | None = None,
    ) -> _State:
        self.visited.add(node.id)
        assigns: list[Node] = []
        redirects: list[Node] = []
        words: list[Node] = []
        named = False
        for c in node.children:
            t = c.type
            if t == "variable_assignment" and not named:
                assigns.append(c)
            elif t in _REDIRECTS:
                redirects.append(c)
            elif t == "command_name":
                named = True
                words.extend(c.children)
            elif named and t != "comment":
                words.append(c)
        extra: list[Node] = []
        for r in redirects:
            if r.type == "file_redirect":
                extra.extend(r.children_by_field_name("destination")[1:])
        if pending is not None:
            redirects = pending[0] + redirects
            extra = [*extra, *pending[1]]
        depth = len(self.writes)
        saved_stdin = self.stdin
        try:
            overlay: dict[str, str | None] = {}
            for a in assigns:
                if not named:
                    self.assignment(a, scope, frame)
                    continue
                # `X=1 cmd`: X is set in cmd's environment only, after cmd's words were expanded.
                tmp = scope.copy()
                assigned = self.assignment(a, tmp, frame)
                if assigned is not None:
                    overlay[assigned[0]] = assigned[1]
            if redirects:
                self.redirects(redirects, scope, frame)
            if not named and not extra:
                if redirects:
                    self.emit(":", (), frame)
                return scope.state
            return self.command_words(words, extra, scope, frame, overlay, self.stdin)
        finally:
            del self.writes[depth:]
            self.stdin = saved_stdin

    def command_words(
        self,
        words: list[Node],
        extra: list[Node],
        scope: _Scope,
        frame: _Frame,
        overlay: dict[str, str | None],
        stdin: _Stdin | None,
    ) -> _State:
        fields: list[_Field] = []
        group: list[Node] = []
        for w in [*words, *extra]:
            # Words with nothing between them are one word (`$"x"` parses as `$` + string).
            if group and w.start_byte != group[-1].end_byte:
                fields.extend(self.expand_group(group, scope, frame))
                group = []
            group.append(w)
        if group:
            fields.extend(self.expand_group(group, scope, frame))
        return self.run(fields, scope, frame, overlay, stdin)

    def run(
        self,
        words: list[_Field],
        scope: _Scope,
        frame: _Frame,
        overlay: dict[str, str | None],
        stdin: _Stdin | None,
    ) -> _State:
        """Run ``words`` as a command: unwrap wrappers, recurse into shells, emit facts."""
        if not words:
            return scope.state
        prog, args = words[0], words[1:]
        if prog.dynamic:
            self.generic("", P.DEFAULT, args, scope, frame, dynamic=True)
            return scope.state
        name = prog.text.rstrip("/").rpartition("/")[2]
        if "/" not in prog.text and name in scope.functions:
            return self.call(name, args, scope, frame)
        handler = _HANDLERS.get(name)
        if handler is not None:
            return handler(self, name, args, scope, frame, overlay, stdin)
        if name in P.WRAPPERS:
            self.wrapper(name, P.WRAPPERS[name], args, scope, frame, overlay, stdin)
        elif name in P.SHELLS:
            self.shell(name, args, scope, frame, overlay, stdin)
        elif name in P.SU_LIKE:
            self.su(name, args, scope, frame, overlay, stdin)
        elif (spec := P.interpreter(name)) is not None:
            self.interpreter(name, spec, args, scope, frame, stdin)
        elif name in P.FOREIGN_SHELLS:
            code = any(a.text.startswith("-") and "c" in a.text[1:] for a in args) or stdin is not None
            self.generic(name, P.DEFAULT, args, scope, frame, inline=P.FOREIGN_SHELLS[name] if code else None)
        elif name in P.POWERSHELL:
            self.powershell(name, args, scope, frame)
        else:
            self.generic(name, P.PROGRAMS.get(name, P.DEFAULT), args, scope, frame)
        return scope.state

    def call(self, name: str, args: list[_Field], scope: _Scope, frame: _Frame) -> _State:
        body = scope.functions[name]
        self.called.add(body.id)
        if frame.depth >= _MAX_DEPTH:
            self.generic(name, P.DEFAULT, args, scope, frame, dynamic=True)
            return scope.state
        saved = scope.positional
        scope.positional = None if any(a.dynamic for a in args) else tuple(a.text for a in args)
        try:
            inner = frame._replace(via=(*frame.via, f"{name}()"), depth=frame.depth + 1)
            return self.stmt(body, scope, inner)
        finally:
            scope.positional = saved

    # -- option parsing

    @staticmethod
    def getopt(
        spec: P.ProgramSpec, args: Sequence[_Field], operand: Callable[[str], bool] | None = None
    ) -> _Opts:
        flags: set[str] = set()
        operands: list[_Field] = []
        values: list[tuple[P.Option | None, _Field, str]] = []
        i, n = 0, len(args)
        end = unknown = False
        while i < n:
            w = args[i]
            t = w.text
            if end or len(t) < 2 or t[0] != "-" or (operand is not None and operand(t)):
                if not spec.permute:
                    return _Opts(flags, [*operands, *args[i:]], values, i, unknown)
                operands.append(w)
                i += 1
                continue
            if t == "--":
                end = True
                i += 1
                if not spec.permute:
                    return _Opts(flags, [*operands, *args[i:]], values, i, unknown)
                continue
            if t.startswith("--"):
                name, eq, val = t[2:].partition("=")
                opt = spec.long.get(name) or _prefix(spec.long, name)
                if opt is None:
                    unknown = True
                    flags.add(name)
                    if eq:
                        values.append((None, _Field(val, w.dynamic, w.splittable), t))
                else:
                    flags.update(opt.names)
                    if eq and opt.kind:
                        values.append((opt, _Field(val, w.dynamic, w.splittable), t))
                    elif opt.kind and opt.kind != "optional" and i + 1 < n:
                        i += 1
                        values.append((opt, args[i], t))
                i += 1
                continue
            j = 1
            while j < len(t):
                c = t[j]
                sopt = spec.short.get(c)
                if sopt is None:
                    unknown = unknown or not c.isdigit()
                    flags.add(c)
                    j += 1
                    continue
                flags.update(sopt.names)
                if not sopt.kind:
                    j += 1
                    continue
                rest = t[j + 1 :]
                if rest:
                    values.append((sopt, _Field(rest, w.dynamic, w.splittable), "-" + c))
                elif sopt.kind != "optional" and i + 1 < n:
                    i += 1
                    values.append((sopt, args[i], "-" + c))
                break
            i += 1
        return _Opts(flags, operands, values, n, unknown)

    # -- generic programs

    def generic(
        self,
        name: str,
        spec: P.ProgramSpec,
        args: Sequence[_Field],
        scope: _Scope,
        frame: _Frame,
        *,
        dynamic: bool = False,
        inline: str | None = None,
        flags: Iterable[str] = (),
        operand: Callable[[str], bool] | None = None,
        extra_paths: Iterable[str] = (),
        cwds: _Cwds = _SCOPE_CWDS,
        label: str | None = None,
    ) -> None:
        opts = self.getopt(spec, args, operand)
        all_flags = set(flags) | opts.flags
        paths: list[str] = list(extra_paths)
        hosts: list[str] = []
        writes: list[str] = []

        def add_path(f: _Field, write: bool = False, option: bool = False) -> None:
            nonlocal dynamic
            if option and f.text == "-":
                return  # `-o -`: stdout
            if f.dynamic:
                dynamic = True
                return
            resolved = self.resolve(f.text, scope, frame, cwds)
            if resolved is None:
                dynamic = True
                return
            paths.extend(resolved)
            if write:
                writes.extend(resolved)

        for opt, value, spelled in opts.values:
            kind = opt.kind if opt is not None else ""
            if kind in ("path", "write"):
                add_path(value, kind == "write", option=True)
            elif kind == "host":
                if value.dynamic:
                    dynamic = True
                elif host := _host_of(value.text, scheme_optional=True):
                    hosts.append(host)
            elif kind == "data":
                at = value.text.find("@") if name == "curl" and opt is not None and opt.name == "form" else 0
                if value.text[at : at + 1] in ("@", "<") and len(value.text) > at + 1:
                    add_path(_Field(value.text[at + 1 :], value.dynamic, value.splittable))
                elif value.splittable:
                    dynamic = True
            elif kind == "shell":
                self.shell_text(value, scope, frame, f"{label or name} {spelled}", child=True)
            elif opt is None:
                if value.dynamic:
                    dynamic = True
                elif _pathish(value.text):
                    add_path(value)
                elif host := _host_of(value.text):
                    hosts.append(host)
            elif value.splittable:
                dynamic = True
        operands = opts.operands
        positional = spec.positional
        if positional == "paths":
            skip = spec.leading_data if not (spec.data_unless & opts.flags) else 0
            for f in operands[:skip]:
                dynamic = dynamic or f.splittable
            for f in operands[skip:]:
                add_path(f, spec.writes_positional)
        elif positional == "auto":
            for f in operands:
                if f.dynamic:
                    dynamic = True
                elif m := _ASSIGN_WORD_RE.fullmatch(f.text):  # make DESTDIR=/opt
                    if _pathish(m.group(2)):
                        add_path(_Field(m.group(2), False, False))
                elif _pathish(f.text):
                    add_path(f)
                elif host := _host_of(f.text):
                    hosts.append(host)
        elif positional == "urls":
            for f in operands:
                if f.dynamic:
                    dynamic = True
                elif host := _host_of(f.text, scheme_optional=True):
                    hosts.append(host)
        elif positional == "host_first":
            real = [f for f in operands if not f.text.isdigit()]
            if real:
                first = real[0]
                if first.dynamic:
                    dynamic = True
                elif host := (_host_of(first.text) or _remote_host(first.text + ":")):
                    hosts.append(host)
        elif positional == "remote":
            for f in operands:
                if f.dynamic:
                    dynamic = True
                elif host := _remote_host(f.text):
                    hosts.append(host)
                else:
                    add_path(f)
        self.emit(
            name,
            args,
            frame,
            flags=all_flags,
            paths=paths,
            hosts=hosts,
            writes=writes,
            dynamic=dynamic,
            inline=inline,
        )

    # -- wrappers

    def wrapper(
        self,
        name: str,
        spec: P.WrapperSpec,
        args: list[_Field],
        scope: _Scope,
        frame: _Frame,
        overlay: dict[str, str | None],
        stdin: _Stdin | None,
    ) -> None:
        opts = self.getopt(spec.options, args)
        rest = list(args[opts.stop :])
        inner_scope = scope
        root = frame.root
        overlay = dict(overlay)
        writes: list[str] = []
        # An option the table does not know may take a value, and then the command is not the
        # word we think it is.
        dynamic = opts.unknown
        for opt, value, _ in opts.values:
            if opt is None:
                continue
            if opt.name == "chdir" or opt.name == "chroot":
                target = None if value.dynamic else self.resolve(value.text, scope, frame)
                if opt.name == "chroot":
                    root = target[0] if target and len(target) == 1 else root
                    dynamic = dynamic or not target or len(target) != 1
                else:
                    inner_scope = scope.copy()
                    inner_scope.cwds = target or None
            elif opt.name == "unset" and name == "env":
                overlay[value.text] = ""
            elif opt.name == "split-string":
                try:
                    split = shlex.split(value.text)
                except ValueError as exc:
                    self.fail(f"env -S: {exc}")
                    split = []
                rest = [_Field(s, value.dynamic, value.dynamic) for s in split] + rest
            elif opt.kind == "write":
                if value.dynamic:
                    dynamic = True
                else:
                    writes.extend(self.resolve(value.text, scope, frame) or ())
        if name == "env":
            while rest and (m := _ASSIGN_WORD_RE.fullmatch(rest[0].text)):
                overlay[m.group(1)] = None if rest[0].dynamic else m.group(2)
                rest = rest[1:]
        skipped = rest[: spec.skip]
        rest = rest[spec.skip :]
        if name == "chroot" and skipped:
            target = None if skipped[0].dynamic else self.resolve(skipped[0].text, scope, frame)
            if target and len(target) == 1:
                root = target[0] if target[0] != "/" else root
                inner_scope = scope.copy()
                inner_scope.cwds = ("/",)
            else:
                dynamic = True
        if name in ("busybox", "toybox") and rest and rest[0].text.startswith("-"):
            rest = []
        if not rest and stdin is not None and stdin.kind != "file" and opts.flags & {"shell", "login"}:
            # `sudo -s <<EOF`: the heredoc is a script for a root shell.
            own = frame._replace(via=(*frame.via, name), privileged=frame.privileged or spec.privileged)
            self.stdin_script("sh", stdin, scope, own, overlay, [])
            return
        if (opts.flags & spec.no_command) or not rest:
            own = frame._replace(privileged=frame.privileged or spec.privileged)
            self.generic(name, spec.options, args, scope, own, dynamic=dynamic)
            return
        if name == "sudo" and "edit" in opts.flags:
            rest = [_Field("sudoedit", False, False), *rest]
        if name in P.STDIN_FED:
            rest = self._stdin_fed(name, opts, rest)
        inner = frame._replace(
            via=(*frame.via, name),
            privileged=frame.privileged or spec.privileged,
            root=root,
            dynamic=frame.dynamic or dynamic,
        )
        if writes:
            self.writes.append((_dedupe(writes), False))
        try:
            if spec.shell_string and not (opts.flags & spec.exec_flags):
                text = _Field(" ".join(w.text for w in rest), any(w.dynamic for w in rest), False)
                self.shell_text(text, inner_scope, frame._replace(dynamic=inner.dynamic), name, child=True)
            else:
                self.run(rest, inner_scope, inner, overlay, stdin)
        finally:
            if writes:
                self.writes.pop()

    @staticmethod
    def _stdin_fed(name: str, opts: _Opts, rest: list[_Field]) -> list[_Field]:
        """xargs / parallel: the words they add come from stdin, so they are unknown."""
        if name == "parallel" and any(w.text in (":::", "::::", ":::+") for w in rest):
            cut = next(i for i, w in enumerate(rest) if w.text in (":::", "::::", ":::+"))
            literal = rest[cut].text == ":::"
            values = [w for w in rest[cut + 1 :] if w.text not in (":::", "::::", ":::+")]
            rest = rest[:cut]
            if literal:
                return [*rest, *values]
        replace = next((v.text for o, v, _ in opts.values if o is not None and o.name == "replace"), None)
        if replace is None and ({"i", "replace"} & opts.flags or name == "parallel"):
            replace = "{}"
        if replace and any(replace in w.text for w in rest):
            return [_Field(w.text, True, True) if replace in w.text else w for w in rest]
        return [*rest, _Field("{stdin}", True, True)]

    def su(
        self,
        name: str,
        args: list[_Field],
        scope: _Scope,
        frame: _Frame,
        overlay: dict[str, str | None],
        stdin: _Stdin | None,
    ) -> _State:
        spec = P.SU_LIKE[name]
        opts = self.getopt(spec, args)
        command = next((v for o, v, _ in opts.values if o is not None and o.name == "command"), None)
        operands = list(opts.operands)
        privileged = frame.privileged or name in P.PRIVILEGED_SU
        inner = frame._replace(privileged=privileged)
        if command is None and name == "flock" and len(operands) > 1:
            after = operands[1:]
            if after[0].text in ("-c", "--command") and len(after) > 1:
                command = after[1]
            else:
                self.run(after, scope, frame._replace(via=(*frame.via, name)), overlay, stdin)
                return scope.state
        if command is None and name == "sg" and len(operands) > 1:
            rest = operands[1:]
            command = _Field(" ".join(w.text for w in rest), any(w.dynamic for w in rest), False)
        if command is None and name == "runuser" and "user" in opts.flags and operands:
            self.run(operands, scope, frame._replace(via=(*frame.via, name)), overlay, stdin)
            return scope.state
        if command is None:
            if name == "su" and stdin is not None and stdin.kind != "file":
                self.stdin_script("sh", stdin, scope, frame._replace(privileged=privileged), overlay, [])
                return scope.state
            self.generic(name, P.DEFAULT, args, scope, frame._replace(privileged=privileged))
            return scope.state
        self.shell_text(command, self.child_scope(scope, overlay, None), inner, f"{name} -c")
        if name == "script" and operands:
            self.generic(name, spec, args, scope, frame)
        return scope.state

    # -- shells

    def child_scope(
        self, scope: _Scope, overlay: Mapping[str, str | None], positional: list[_Field] | None
    ) -> _Scope:
        """The scope a child shell starts with: exported variables, the command's overlay."""
        vars_: _Vars = {}
        for k, v in scope.vars.items():
            if k == _TAINT or k in scope.exported or scope.allexport:
                vars_[k] = v
            elif self.env is None:
                vars_[k] = None  # may or may not have been exported before the text ran
            elif k in self.env:
                vars_[k] = v  # assigning an inherited variable keeps it exported
            else:
                vars_[k] = ""
        vars_.update(overlay)
        pos = None
        if positional is not None and not any(p.dynamic for p in positional):
            pos = tuple(p.text for p in positional)
        return _Scope(cwds=scope.cwds, vars=vars_, positional=pos)

    def shell_text(
        self, text: _Field, scope: _Scope, frame: _Frame, label: str, *, child: bool = False
    ) -> None:
        """Run ``text`` as shell code in ``scope`` (a copy when ``child``)."""
        inner = frame._replace(via=(*frame.via, label), depth=frame.depth + 1)
        if text.dynamic:
            # The code itself is only known at run time.
            self.emit(label.split()[0], [text], inner, dynamic=True, inline="bash")
        self.source(text.text, scope.copy() if child else scope, inner, label)

    def shell(
        self,
        name: str,
        args: list[_Field],
        scope: _Scope,
        frame: _Frame,
        overlay: dict[str, str | None],
        stdin: _Stdin | None,
    ) -> None:
        plus = 0  # `bash +x -c ...`: "+" options turn things off; skip them (and +o's value)
        while plus < len(args) and args[plus].text.startswith("+") and len(args[plus].text) > 1:
            plus += 2 if args[plus].text in ("+o", "+O") else 1
        opts = self.getopt(P.SHELL_OPTIONS, args[plus:])
        operands = list(args[plus + opts.stop :])
        if "command" in opts.flags:
            if not operands:
                self.fail(f"{name} -c: option requires an argument")
                return
            inner_scope = self.child_scope(scope, overlay, operands[2:] if len(operands) > 1 else [])
            self.shell_text(operands[0], inner_scope, frame, f"{name} -c")
            return
        if "stdin" in opts.flags or not operands:
            if stdin is None:
                self.generic(name, P.DEFAULT, args, scope, frame)
            else:
                self.stdin_script(name, stdin, scope, frame, overlay, operands)
            return
        # `bash script.sh args`: the script's content is not visible.
        script = operands[0]
        resolved = None if script.dynamic else self.resolve(script.text, scope, frame)
        self.generic(
            name, P.DEFAULT, args, scope, frame, extra_paths=resolved or (), dynamic=resolved is None
        )

    def stdin_script(
        self,
        name: str,
        stdin: _Stdin,
        scope: _Scope,
        frame: _Frame,
        overlay: dict[str, str | None],
        positional: list[_Field],
    ) -> None:
        if stdin.kind == "pipe":
            self.emit(name, [], frame, dynamic=True, inline=name)
        elif stdin.kind == "file":
            self.emit(name, [], frame, paths=(stdin.text,))
        else:
            label = f"{name} <<" if stdin.kind == "heredoc" else f"{name} <<<"
            inner_scope = self.child_scope(scope, overlay, positional)
            self.shell_text(_Field(stdin.text, stdin.dynamic, False), inner_scope, frame, label)

    def interpreter(
        self,
        name: str,
        spec: P.InterpreterSpec,
        args: list[_Field],
        scope: _Scope,
        frame: _Frame,
        stdin: _Stdin | None,
    ) -> None:
        opts = self.getopt(spec.options, args)
        operands = list(args[opts.stop :])
        code = any(o is not None and o.kind == "code" for o, _, _ in opts.values)
        paths: list[str] = []
        dynamic = False
        rest = operands
        if spec.code_operand and not (opts.flags & spec.code_unless):
            code = code or bool(operands)
            rest = operands[1:]
        elif not code and "module" not in opts.flags:
            if not operands or operands[0].text == "-":
                code = spec.stdin_script and stdin is not None and stdin.kind != "file"
            else:
                script = operands[0]
                resolved = None if script.dynamic else self.resolve(script.text, scope, frame)
                if resolved is None:
                    dynamic = True
                else:
                    paths.extend(resolved)
                rest = operands[1:]
        for o, v, _ in opts.values:
            if o is not None and o.kind == "path":
                resolved = None if v.dynamic else self.resolve(v.text, scope, frame)
                paths.extend(resolved or ())
        for f in rest:
            if f.dynamic:
                dynamic = True
            elif spec.code_operand:  # awk: operands are input files, or var=value assignments
                if not _ASSIGN_WORD_RE.fullmatch(f.text):
                    paths.extend(self.resolve(f.text, scope, frame) or ())
            elif _pathish(f.text):
                paths.extend(self.resolve(f.text, scope, frame) or ())
        self.emit(
            name,
            args,
            frame,
            flags=opts.flags,
            paths=paths,
            dynamic=dynamic,
            inline=spec.language if code else None,
        )

    def powershell(self, name: str, args: list[_Field], scope: _Scope, frame: _Frame) -> None:
        code, i = False, 0
        flags: set[str] = set()
        paths: list[str] = []
        while i < len(args):
            t = args[i].text
            if P.POWERSHELL_CODE.fullmatch(t):
                code = True
                break
            if P.POWERSHELL_FILE.fullmatch(t):
                if i + 1 < len(args):
                    paths.extend(self.resolve(args[i + 1].text, scope, frame) or ())
                break
            if t.startswith(("-", "/")):
                flags.add(t.lstrip("-/").lower())
                i += 2 if P.POWERSHELL_VALUE.fullmatch(t) else 1
                continue
            code = True  # a bare operand is a command (Windows PowerShell) or a script (pwsh)
            break
        self.emit(name, args, frame, flags=flags, paths=paths, inline="powershell" if code else None)


def _prefix(table: Mapping[str, P.Option], name: str) -> P.Option | None:
    """GNU getopt_long accepts any unambiguous prefix: `rm --rec` is `rm --recursive`."""
    if not name or not table:
        return None
    found = {id(o): o for k, o in table.items() if k.startswith(name)}
    return next(iter(found.values())) if len(found) == 1 else None


def _syntax_error(root: Node, src: bytes, label: str) -> str:
    bad = _first_error(root)
    where = ""
    if bad is not None:
        row, col = bad.start_point
        near = src[bad.start_byte : bad.start_byte + 20].decode("utf-8", "replace")
        if bad.is_missing:
            kind = f"missing {bad.type!r}"
        else:
            kind = f"unexpected {near!r}" if near else "unexpected end"
        where = f" at line {row + 1} column {col + 1}: {kind}"
    return f"{label + ': ' if label else ''}syntax error{where}"


def _first_error(node: Node) -> Node | None:
    if node.is_error or node.is_missing:
        return node
    for c in node.children:
        if c.has_error or c.is_missing:
            found = _first_error(c)
            if found is not None:
                return found
    return None


# --- programs with their own handling -------------------------------------------------------------------

_Handler = Callable[[_Walker, str, _Args, _Scope, _Frame, dict[str, str | None], _Stdin | None], _State]


def _cd(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    old = scope.state
    operands = [a for a in args if not (a.text.startswith("-") and len(a.text) > 1)]
    new: _Cwds
    paths: list[str] = []
    if name == "popd" or (name == "pushd" and not operands):
        new = None
    elif not operands:
        home = w.lookup("HOME", scope)
        new = (home,) if home else None
    elif operands[0].dynamic or operands[0].text == "-":
        new = None
    else:
        target = operands[0].text
        new = w.resolve(target, scope, _TOP)
        plain = not target.startswith(("/", "./", "../")) and target not in (".", "..")
        # Without an env, CDPATH is assumed unset unless the text sets it.
        known = "CDPATH" in scope.vars or _TAINT in scope.vars or w.env is not None
        cdpath = w.lookup("CDPATH", scope) if plain and known else ""
        if cdpath is None or (cdpath and any(d and not d.startswith("/") for d in cdpath.split(":"))):
            new = None
        elif cdpath and new is not None:
            alts = tuple(_norm(posixpath.join(d, target)) for d in cdpath.split(":") if d)
            new = _union_cwds(alts, new)
        paths.extend(new or ())
    w.emit(name, args, frame, paths=[frame.root + p if frame.root else p for p in paths], dynamic=new is None)
    scope.cwds = new
    return old


def _exit(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    w.generic(name, P.PROGRAMS["exit"], args, scope, frame)
    # Nothing after an exit runs, so `cd x || exit; rm y` only ever runs rm in x.
    scope.cwds = ()
    return scope.state


def _eval(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    if args:
        text = _Field(" ".join(a.text for a in args), any(a.dynamic for a in args), False)
        w.shell_text(text, scope, frame, "eval")  # eval runs in the current shell: state carries over
    return scope.state


def _source(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    w.generic(name, P.PROGRAMS["source"], args[:1], scope, frame)
    # The sourced file can change anything.
    scope.cwds = None
    scope.vars = {_TAINT: None}
    return scope.state


def _reads(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    """read / mapfile / getopts / printf -v: the named variables get values from outside."""
    w.generic(name, P.DEFAULT if name != "printf" else P.PROGRAMS["printf"], args, scope, frame)
    names: list[str] = []
    if name == "printf":
        names = [args[i + 1].text for i, a in enumerate(args[:-1]) if a.text == "-v"]
    elif name == "read":
        names = [a.text for a in args if _NAME_RE.fullmatch(a.text)] or ["REPLY"]
        names += [args[i + 1].text for i, a in enumerate(args[:-1]) if a.text == "-a"]
    elif name in ("mapfile", "readarray"):
        names = [a.text for a in args if _NAME_RE.fullmatch(a.text)][-1:] or ["MAPFILE"]
    elif name == "getopts" and len(args) > 1:
        names = [args[1].text, "OPTARG", "OPTIND"]
    for n in names:
        scope.assign(n, None)
    return scope.state


def _let(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    w.generic(name, P.PROGRAMS["let"], args, scope, frame)
    for a in args:
        for m in _ARITH_ASSIGN_RE.finditer(a.text):
            scope.assign(m.group(1) or m.group(2) or m.group(3), None)
    return scope.state


def _set(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    w.generic(name, P.PROGRAMS["set"], args, scope, frame)
    texts = [a.text for a in args]
    if "-a" in texts or ("-o" in texts and "allexport" in texts):
        scope.allexport = True
    if "--" in texts:
        rest = args[texts.index("--") + 1 :]
        scope.positional = None if any(a.dynamic for a in rest) else tuple(a.text for a in rest)
    return scope.state


def _trap(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    w.generic(name, P.PROGRAMS["trap"], args, scope, frame)
    operands = [a for a in args if not a.text.startswith("-")]
    if len(operands) >= 2 and operands[0].text:
        w.shell_text(operands[0], scope, frame, "trap", child=True)
    return scope.state


def _alias(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    w.generic(name, P.PROGRAMS["alias"], args, scope, frame)
    for a in args:
        if m := _ASSIGN_WORD_RE.fullmatch(a.text):
            w.shell_text(_Field(m.group(2), a.dynamic, False), scope, frame, "alias", child=True)
    return scope.state


def _find(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    i, n = 0, len(args)
    while i < n and (args[i].text in P.FIND_LEADING or args[i].text.startswith("-O")):
        i += 1
    while i < n and args[i].text in P.FIND_LEADING_VALUE:
        i += 2
    starts: list[_Field] = []
    while i < n and not args[i].text.startswith(("-", "(", "!", ")", ",")):
        starts.append(args[i])
        i += 1
    if not starts:
        starts = [_Field(".", False, False)]
    dynamic = any(s.dynamic for s in starts)
    start_paths: list[str] = []
    for s in starts:
        resolved = None if s.dynamic else w.resolve(s.text, scope, frame)
        if resolved is None:
            dynamic = True
        else:
            start_paths.extend(resolved)
    flags: set[str] = set()
    paths = list(start_paths)
    writes: list[str] = []
    nested: list[tuple[str, list[_Field]]] = []
    while i < n:
        t = args[i].text
        i += 1
        if not t.startswith("-") or len(t) < 2:
            continue
        prim = t[1:]
        flags.add(prim)
        if prim in P.FIND_EXEC:
            cmd: list[_Field] = []
            while (
                i < n and args[i].text != ";" and not (args[i].text == "+" and cmd and "{}" in cmd[-1].text)
            ):
                cmd.append(args[i])
                i += 1
            i += 1
            nested.append((prim, cmd))
        elif prim in P.FIND_WRITE_VALUE and i < n:
            value = args[i]
            i += 2 if prim == "fprintf" else 1
            resolved = None if value.dynamic else w.resolve(value.text, scope, frame)
            if resolved is None:
                dynamic = True
            else:
                writes.extend(resolved)
                paths.extend(resolved)
        elif prim in P.FIND_VALUE or prim.startswith("newer"):
            if prim in P.FIND_PATH_VALUE and i < n:
                paths.extend(w.resolve(args[i].text, scope, frame) or ())
            i += 1
    w.emit(name, args, frame, flags=flags, paths=paths, writes=writes, dynamic=dynamic)
    if "delete" in flags:
        w.emit(
            "rm",
            starts,
            frame,
            flags=("recursive", "force"),
            paths=start_paths,
            dynamic=dynamic,
            via=(*frame.via, "find -delete"),
        )
    for prim, cmd in nested:
        # `{}` stands for what find found: something under its start paths.
        words: list[_Field] = []
        for c in cmd:
            if "{}" not in c.text:
                words.append(c)
            elif dynamic:
                words.append(_Field(c.text, True, True))
            else:
                words.extend(_Field(c.text.replace("{}", p), False, False) for p in start_paths)
        inner_scope = scope
        if prim in ("execdir", "okdir"):
            inner_scope = scope.copy()
            inner_scope.cwds = tuple(start_paths) if start_paths and not dynamic else None
        w.run(words, inner_scope, frame._replace(via=(*frame.via, f"find -{prim}")), {}, None)
    return scope.state


def _git(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_unused: object) -> _State:
    opts = w.getopt(P.GIT_GLOBAL, args)
    cwds: _Cwds = scope.cwds
    extra: list[str] = []
    dynamic = False
    for opt, value, _ in opts.values:
        if opt is None:
            continue
        if opt.name == "C":
            resolved = None if value.dynamic else w.resolve(value.text, scope, frame, cwds)
            cwds = resolved if resolved else None
            extra.extend(resolved or ())
            dynamic = dynamic or resolved is None
        elif opt.name == "c":
            key, _, val = value.text.partition("=")
            key = key.lower()
            if key in P.GIT_COMMAND_KEYS or (key.startswith("alias.") and val.startswith("!")):
                text = _Field(val.removeprefix("!"), value.dynamic, False)
                w.shell_text(text, scope, frame, "git -c", child=True)
        elif opt.kind == "path":
            extra.extend(w.resolve(value.text, scope, frame, cwds) or ())
    rest = list(args[opts.stop :])
    if not rest:
        w.emit(name, args, frame, flags=opts.flags, dynamic=dynamic)
        return scope.state
    sub = rest[0]
    if sub.dynamic:
        w.generic(name, P.DEFAULT, rest, scope, frame, dynamic=True)
        return scope.state
    label = f"git {sub.text}"
    sub_args = rest[1:]
    if sub.text == "bisect" and sub_args and sub_args[0].text == "run":
        inner = scope.copy()
        inner.cwds = cwds
        w.run(sub_args[1:], inner, frame._replace(via=(*frame.via, "git bisect run")), {}, None)
    elif sub.text == "submodule" and sub_args and sub_args[0].text == "foreach":
        body = [a for a in sub_args[1:] if not a.text.startswith("--")]
        text = _Field(" ".join(a.text for a in body), any(a.dynamic for a in body), False)
        w.shell_text(text, scope, frame, "git submodule foreach", child=True)
    spec = P.GIT_SUBCOMMANDS.get(sub.text, P.DEFAULT)
    hosts_at = P.GIT_REMOTE_OPERAND.get(sub.text)
    sub_opts = w.getopt(spec, sub_args)
    if sub.text in ("remote", "submodule") and sub_opts.operands:
        verb = sub_opts.operands[0].text
        hosts_at = {"add": 2 if sub.text == "remote" else 1, "set-url": 2}.get(verb)
    w.generic(name, spec, sub_args, scope, frame, cwds=cwds, extra_paths=extra, dynamic=dynamic, label=label)
    fact = w.facts[-1]  # generic emits its own fact last, after anything nested in its options
    hosts = list(fact.hosts)
    if hosts_at is not None and hosts_at < len(sub_opts.operands):
        remote = sub_opts.operands[hosts_at]
        if host := _remote_host(remote.text):
            hosts.append(host)
    for operand in sub_opts.operands:
        if "://" in operand.text and (host := _host_of(operand.text)):
            hosts.append(host)
    paths = fact.paths
    if sub.text == "clone" and len(sub_opts.operands) > 1 and not sub_opts.operands[1].dynamic:
        paths = _dedupe([*paths, *(w.resolve(sub_opts.operands[1].text, scope, frame, cwds) or ())])
    if sub.text == "clean" and not sub_opts.operands:
        paths = _dedupe([*paths, *(cwds or ())])
        dynamic = dynamic or cwds is None
    flags = fact.flags
    if sub.text == "push" and any(op.text.startswith("+") for op in sub_opts.operands):
        flags = flags | {"force"}  # "+main" force-pushes that ref, like --force
    w.facts[-1] = CommandFact(
        "git",
        (sub.text, *fact.args),
        flags,
        paths,
        _dedupe(hosts),
        fact.privileged,
        fact.dynamic or dynamic,
        fact.inline_code,
        fact.via,
        fact.writes,
    )
    return scope.state


def _dd(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    flags: set[str] = set()
    paths: list[str] = []
    writes: list[str] = []
    dynamic = False
    for a in args:
        key, eq, value = a.text.partition("=")
        if not eq:
            flags.add(key.lstrip("-"))
            continue
        flags.add(key)
        if key in ("if", "of"):
            resolved = None if a.dynamic else w.resolve(value, scope, frame)
            if resolved is None:
                dynamic = True
                continue
            paths.extend(resolved)
            if key == "of":
                writes.extend(resolved)
    w.emit(name, args, frame, flags=flags, paths=paths, writes=writes, dynamic=dynamic)
    return scope.state


def _tar(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    spec = P.PROGRAMS["tar"]
    if args and re.fullmatch(r"[A-Za-z]+", args[0].text):
        # Old-style `tar xzf file`: each letter that takes a value takes the next word.
        letters, rest = args[0].text, list(args[1:])
        out: list[_Field] = []
        for c in letters:
            out.append(_Field("-" + c, args[0].dynamic, False))
            opt = spec.short.get(c)
            if opt is not None and opt.kind and opt.kind != "optional" and rest:
                out.append(rest.pop(0))
        args = out + rest
    for a in args:
        if a.text.startswith("--checkpoint-action=exec="):
            text = _Field(a.text.removeprefix("--checkpoint-action=exec="), a.dynamic, False)
            w.shell_text(text, scope, frame, "tar --checkpoint-action", child=True)
    w.generic(name, spec, args, scope, frame)
    return scope.state


def _chmod(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    # `chmod -x file`: "-x" is a mode, not an option.
    w.generic(name, P.PROGRAMS[name], args, scope, frame, operand=_chmod_mode)
    return scope.state


def _chmod_mode(text: str) -> bool:
    return not text.startswith("--") and not set(text[1:]) <= {"R", "c", "f", "v"}


def _kill(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    signals: set[str] = set()
    rest: list[_Field] = []
    take_value = False
    for a in args:
        t = a.text
        if take_value:
            signals.add(_signal_name(t))
            take_value = False
        elif t in ("-s", "-n", "--signal"):
            take_value = True
        elif t.startswith("--signal="):
            signals.add(_signal_name(t.partition("=")[2]))
        elif _SIGNAL_RE.fullmatch(t) and (name == "kill" or not t[1:].isalpha() or len(t) > 3):
            signals.add(_signal_name(t[1:]))
        else:
            rest.append(a)
    w.generic(name, P.PROGRAMS[name], rest, scope, frame, flags=signals)
    fact = w.facts[-1]
    w.facts[-1] = CommandFact(
        fact.program,
        tuple(a.text for a in args),
        fact.flags,
        fact.paths,
        fact.hosts,
        fact.privileged,
        fact.dynamic,
        fact.inline_code,
        fact.via,
        fact.writes,
    )
    return scope.state


def _signal_name(text: str) -> str:
    t = text.upper().removeprefix("SIG")
    return P.SIGNALS.get(t, t)


def _deno(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    inline = "deno" if args and args[0].text == "eval" else None
    w.generic(name, P.DEFAULT, args, scope, frame, inline=inline)
    return scope.state


_HANDLERS: dict[str, _Handler] = {
    "cd": _cd,
    "pushd": _cd,
    "popd": _cd,
    "eval": _eval,
    "exit": _exit,
    "source": _source,
    ".": _source,
    "read": _reads,
    "mapfile": _reads,
    "readarray": _reads,
    "getopts": _reads,
    "let": _let,
    "set": _set,
    "trap": _trap,
    "alias": _alias,
    "find": _find,
    "git": _git,
    "dd": _dd,
    "tar": _tar,
    "chmod": _chmod,
    "kill": _kill,
    "pkill": _kill,
    "killall": _kill,
    "deno": _deno,
}


def _printf(w: _Walker, name: str, args: _Args, scope: _Scope, frame: _Frame, *_: object) -> _State:
    if any(a.text == "-v" for a in args):
        return _reads(w, name, args, scope, frame)
    w.generic(name, P.PROGRAMS["printf"], args, scope, frame)
    return scope.state


_HANDLERS["printf"] = _printf
