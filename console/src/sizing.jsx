// The Sizing page: each recent execution's peak memory against the configured and effective
// amounts, the decisions over time with their conditions and evidence, and the GB-seconds saved.
import { json } from './api.js';
import { Chart } from './chart.jsx';
import { Picker } from './logs.jsx';
import { ErrorBox, fmtTime, usePoll } from './util.jsx';

export function SizingPage({ name }) {
  const { data, error } = usePoll(
    async () => {
      if (!name) return null;
      const [sizing, runs] = await Promise.all([
        json('GET', ['ember', 'v1', 'functions', name, 'sizing']),
        json('GET', ['ember', 'v1', 'console', 'functions', name, 'executions']),
      ]);
      return { sizing, runs };
    },
    10000,
    [name],
  );
  const s = data?.sizing;
  const runs = data?.runs?.Executions || [];
  const xs = runs.map((r) => Date.parse(r.Time) / 1000);
  const memory = [xs, runs.map((r) => r.PeakMemoryMB), runs.map((r) => r.MemoryMB), runs.map(() => s?.ConfiguredMemoryMB)];
  const history = s?.History || [];
  const hx = history.map((h) => Date.parse(h.Time) / 1000);
  const decisions = [hx, history.map((h) => h.FromMB), history.map((h) => h.ToMB)];
  return (
    <section>
      <h2>Sizing</h2>
      <div class="toolbar">
        <Picker name={name} page="sizing" />
      </div>
      <ErrorBox error={error} />
      {s ? (
        <>
          <div class="cards" id="sizing-summary">
            <div class="card">
              <span>Configured</span>
              <strong>{s.ConfiguredMemoryMB} MB</strong>
            </div>
            <div class="card">
              <span>Effective</span>
              <strong>{s.EffectiveMemoryMB} MB</strong>
            </div>
            <div class="card">
              <span>Mode</span>
              <strong>{s.Mode}</strong>
            </div>
            <div class="card">
              <span>Saved (estimate)</span>
              <strong>{s.EstimatedGBSecondsSaved.toFixed(3)} GB-s</strong>
            </div>
            <div class="card">
              <span>Executions measured</span>
              <strong>{s.Executions}</strong>
            </div>
          </div>
          {s.Recommendation ? (
            <p id="recommendation">
              Latest decision: <strong>{s.Recommendation.Direction}</strong> from {s.Recommendation.FromMB} MB to {s.Recommendation.ToMB} MB because{' '}
              <code>{s.Recommendation.Condition}</code> ({s.Recommendation.Applied ? 'applied' : 'recommended only'}): peak p50{' '}
              {s.Recommendation.Evidence.PeakMemoryP50MB} MB, high {s.Recommendation.Evidence.PeakMemoryHighMB} MB, max {s.Recommendation.Evidence.PeakMemoryMaxMB} MB over{' '}
              {s.Recommendation.Evidence.Executions} executions; {s.Recommendation.Evidence.OutOfMemory} out of memory, {s.Recommendation.Evidence.Timeouts} timeouts; CPU p90{' '}
              {s.Recommendation.Evidence.CpuP90VCpus.toFixed(2)} vCPU.
            </p>
          ) : (
            <p class="muted">
              No decision yet about this version: {s.WindowExecutions} executions since its amount last changed; a condition must hold for{' '}
              {s.Thresholds.Threshold} of them.
            </p>
          )}
          <Chart
            id="sizing-memory"
            title="Peak memory of each recent execution"
            data={memory}
            xLabel="Execution start (UTC)"
            yLabel="Memory (MB)"
            series={[{ label: 'Peak memory used (MB)', points: true }, { label: 'Effective: the container\'s (MB)' }, { label: 'Configured (MB)', dash: [6, 4] }]}
          />
          {history.length ? (
          <Chart
            id="sizing-decisions"
            title="Sizing decisions"
            data={decisions}
            xLabel="Decision time (UTC)"
            yLabel="Memory (MB)"
            series={[{ label: 'From (MB)', points: true }, { label: 'To (MB)', points: true }]}
          />
          ) : null}
          <h3>Decisions</h3>
          {history.length ? null : <p class="muted">None yet.</p>}
          <table id="decisions">
            <thead>
              <tr>
                <th>Time</th>
                <th>Direction</th>
                <th>From → to (MB)</th>
                <th>Condition</th>
                <th>Applied</th>
                <th>Evidence</th>
              </tr>
            </thead>
            <tbody>
              {history
                .slice()
                .reverse()
                .map((h) => (
                  <tr key={h.Time + h.ToMB}>
                    <td>{fmtTime(h.Time)}</td>
                    <td>{h.Direction}</td>
                    <td class="num">
                      {h.FromMB} → {h.ToMB}
                    </td>
                    <td>
                      <code>{h.Condition}</code>
                    </td>
                    <td>{h.Applied ? 'yes' : 'no'}</td>
                    <td>
                      {h.Evidence
                        ? `peak p50 ${h.Evidence.PeakMemoryP50MB} / high ${h.Evidence.PeakMemoryHighMB} / max ${h.Evidence.PeakMemoryMaxMB} MB, ${h.Evidence.Executions} executions, ${h.Evidence.OutOfMemory} OOM, ${h.Evidence.Timeouts} timeouts`
                        : '—'}
                    </td>
                  </tr>
                ))}
            </tbody>
          </table>
        </>
      ) : null}
    </section>
  );
}
