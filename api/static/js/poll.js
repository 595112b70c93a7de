// Live updates without reloading: call `tick` every `intervalMs` while the tab
// is visible. A hidden tab stops asking (no load on the server for nothing)
// and catches up as soon as it is shown again. Calls never overlap; a tick
// that returns false ends the polling (a finished job does not change).

export function poll(tick, intervalMs = 2000) {
  let timer = null;
  let disposed = false;
  let finished = false;
  let running = false;

  async function run() {
    clearTimeout(timer);
    timer = null;
    if (disposed || finished || running || document.visibilityState !== "visible") return;
    running = true;
    try {
      finished = (await tick()) === false;
    } catch (error) {
      console.error(error); // a tick shows its own errors; keep polling
    } finally {
      running = false;
    }
    if (!disposed && !finished && document.visibilityState === "visible") {
      timer = setTimeout(run, intervalMs);
    }
  }

  function onVisibility() {
    if (document.visibilityState === "visible") run();
  }

  document.addEventListener("visibilitychange", onVisibility);
  run();
  return {
    /** Ask now (after a user action) instead of waiting for the next tick. */
    now() {
      finished = false;
      run();
    },
    stop() {
      disposed = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    },
  };
}
