// Small helpers shared by the pages.
import { useEffect, useRef, useState } from 'preact/hooks';

/**
 * Runs `fn` now and every `ms` while the tab is visible (a hidden tab asks the server nothing),
 * answering {data, error}. `deps` restart it.
 */
export function usePoll(fn, ms, deps = []) {
  const [state, setState] = useState({ data: null, error: null });
  const latest = useRef(fn);
  latest.current = fn;
  useEffect(() => {
    let stopped = false;
    let timer = null;
    const tick = async () => {
      timer = null;
      if (document.hidden) return;
      try {
        const data = await latest.current();
        if (!stopped) setState({ data, error: null });
      } catch (error) {
        if (!stopped) setState((s) => ({ data: s.data, error }));
      }
      if (!stopped && ms && !document.hidden) timer = setTimeout(tick, ms);
    };
    const visibility = () => {
      if (!document.hidden && !timer && !stopped) tick();
    };
    document.addEventListener('visibilitychange', visibility);
    tick();
    return () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      document.removeEventListener('visibilitychange', visibility);
    };
  }, deps);
  return state;
}

export function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export const href = (...parts) => '#/' + parts.map(encodeURIComponent).join('/');

export function ErrorBox({ error }) {
  if (!error) return null;
  return (
    <div class="error" role="alert">
      {error.type ? <strong>{error.type}: </strong> : null}
      {error.message || String(error)}
    </div>
  );
}
