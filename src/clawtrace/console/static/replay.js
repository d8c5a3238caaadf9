// The reasoning replay: walk a session's steps with buttons or the keyboard.
// j / → next, k / ← previous, Home / End first / last, b the step before an alert fired.
// The step shown is kept in the address (#step-N) so a link or a reload opens it again.
"use strict";

(() => {
  const replay = document.getElementById("replay");
  if (!replay) return;
  const count = Number(replay.dataset.steps);
  const rows = Array.from(document.querySelectorAll("#timeline li.step"));
  const details = Array.from(document.querySelectorAll("#step-details .step-detail"));
  const number = document.getElementById("step-number");
  const alertJumps = Array.from(document.querySelectorAll(".alert-jump[data-step-jump]"));
  let current = 0;

  function show(index, focusRow = false) {
    current = Math.max(0, Math.min(count - 1, index));
    rows.forEach((row, i) => {
      row.classList.toggle("current", i === current);
      row.querySelector(".step-row").setAttribute("aria-current", i === current ? "step" : "false");
    });
    details.forEach((detail, i) => { detail.hidden = i !== current; });
    number.textContent = String(current + 1);
    rows[current].scrollIntoView({ block: "nearest" });
    if (focusRow) rows[current].querySelector(".step-row").focus({ preventScroll: true });
    history.replaceState(null, "", `${location.pathname}${location.search}#step-${current + 1}`);
  }

  function beforeNextAlert() {
    // The next alert after the current step (wrapping around), so b walks through them in turn.
    if (!alertJumps.length) return;
    const targets = alertJumps.map((b) => Number(b.dataset.stepJump));
    const next = targets.find((t) => t > current);
    show(next === undefined ? targets[0] : next, true);
  }

  replay.addEventListener("click", (event) => {
    const go = event.target.closest("[data-step-go]");
    if (go) {
      const to = { first: 0, prev: current - 1, next: current + 1, last: count - 1 }[go.dataset.stepGo];
      show(to);
      return;
    }
    const jump = event.target.closest("[data-step-jump]");
    if (jump) show(Number(jump.dataset.stepJump), jump.classList.contains("step-row"));
  });

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, textarea, select")) return;
    const moves = { j: 1, ArrowRight: 1, ArrowDown: 1, k: -1, ArrowLeft: -1, ArrowUp: -1 };
    if (event.key in moves) show(current + moves[event.key], true);
    else if (event.key === "Home") show(0, true);
    else if (event.key === "End") show(count - 1, true);
    else if (event.key === "b") beforeNextAlert();
    else return;
    event.preventDefault();
  });

  const fromHash = /^#step-(\d+)$/.exec(location.hash);
  if (fromHash) show(Number(fromHash[1]) - 1);
  else if (new URLSearchParams(location.search).has("at") && alertJumps.length) {
    // Opened from an alert: the step before that alert (the marker fired closest to ?at=).
    const at = Number(new URLSearchParams(location.search).get("at"));
    const distance = (b) => Math.abs(Number(b.dataset.firedAt) - at);
    const closest = alertJumps.reduce((best, b) => (distance(b) < distance(best) ? b : best));
    show(Number(closest.dataset.stepJump), true);
  }
  else show(0);
})();
