// The Fleet page (admin): the warming pool, the active pool by account and the retiring VMs,
// live (`GET /ember/v1/fleet` every 2 s while the tab is visible), and plots of the last ten
// minutes (the server's samples, then the page's own): request rate and N, VMs per pool,
// starts by kind, host memory.
import { useState } from 'preact/hooks';
import { json } from './api.js';
import { Chart } from './chart.jsx';
import { ErrorBox, fmtTime, usePoll } from './util.jsx';

const EVERY_MS = 2000;
const WINDOW_S = 600;
/**
 * The plots' samples, kept across page changes: {t (epoch s), rate, n, warming, active,
 * retiring, reserved, capacity, starts}. Seeded from the server's last ten minutes
 * (`/ember/v1/console/fleet-history`) when the page opens, then one per poll.
 */
const samples = [];

function add(sample) {
  if (samples.length && sample.t <= samples[samples.length - 1].t) return;
  samples.push(sample);
  while (samples.length && samples[0].t < sample.t - WINDOW_S) samples.shift();
}

function seed(history) {
  samples.length = 0;
  for (const s of history.Samples) {
    add({
      t: s.Time / 1000,
      rate: s.RequestRatePerSecond,
      n: s.ReplenishCount,
      warming: s.WarmingVms,
      active: s.ActiveVms,
      retiring: s.RetiringVms,
      reserved: s.ReservedMemoryMB,
      capacity: s.HostMemoryMB,
      starts: s.Starts,
    });
  }
}

function sampleOf(v, starts) {
  return {
    t: Date.now() / 1000,
    rate: v.RequestRatePerSecond,
    n: v.ReplenishCount,
    warming: v.WarmingPool.length,
    active: v.ActivePool.length,
    retiring: v.Retiring.length,
    reserved: v.HostCapacity.ReservedMemoryMB,
    capacity: v.HostCapacity.MemoryMB,
    starts,
  };
}

function series() {
  const xs = samples.map((s) => s.t);
  const f = (key) => samples.map((s) => s[key]);
  const rate = (key) =>
    samples.map((s, i) => {
      const prev = samples[i - 1];
      if (!prev || !s.starts || !prev.starts) return null;
      return Math.max(0, (s.starts[key] - prev.starts[key]) * (60 / (s.t - prev.t)));
    });
  return {
    rate: [xs, f('rate'), f('n')],
    pools: [xs, f('warming'), f('active'), f('retiring')],
    starts: [xs, rate('Warm'), rate('ColdContainer'), rate('ColdVm')],
    memory: [xs, f('reserved'), f('capacity')],
  };
}

export function FleetPage() {
  const [, setTick] = useState(0);
  const [seeded, setSeeded] = useState(false);
  const { data, error } = usePoll(async () => {
    if (!seeded) {
      seed(await json('GET', ['ember', 'v1', 'console', 'fleet-history']));
      setSeeded(true);
    }
    const [fleet, activity] = await Promise.all([json('GET', ['ember', 'v1', 'fleet']), json('GET', ['ember', 'v1', 'console', 'activity'])]);
    add(sampleOf(fleet, activity.Starts));
    setTick((n) => n + 1);
    return { fleet, starts: activity.Starts };
  }, EVERY_MS);
  if (!data) return <ErrorBox error={error} />;
  const v = data.fleet;
  const s = series();
  const byAccount = new Map();
  for (const vm of v.ActivePool) {
    if (!byAccount.has(vm.AccountId)) byAccount.set(vm.AccountId, []);
    byAccount.get(vm.AccountId).push(vm);
  }
  const containers = v.ActivePool.reduce((n, vm) => n + vm.Containers.length, 0);
  return (
    <section>
      <h2>Fleet</h2>
      <ErrorBox error={error} />
      <div class="cards" id="fleet-summary">
        <div class="card">
          <span>Request rate</span>
          <strong id="request-rate">{v.RequestRatePerSecond.toFixed(2)} /s</strong>
        </div>
        <div class="card">
          <span>N (warming pool target)</span>
          <strong>{v.ReplenishCount}</strong>
          <small>{v.ReplenishReason}</small>
        </div>
        <div class="card">
          <span>VMs warming / active / retiring</span>
          <strong id="pool-sizes">
            {v.WarmingPool.length} / {v.ActivePool.length} / {v.Retiring.length}
          </strong>
        </div>
        <div class="card">
          <span>Containers</span>
          <strong id="containers">{containers}</strong>
        </div>
        <div class="card">
          <span>Executions (warm / new container / new VM)</span>
          <strong id="starts">{data.starts ? `${data.starts.Warm} / ${data.starts.ColdContainer} / ${data.starts.ColdVm}` : '—'}</strong>
        </div>
        <div class="card">
          <span>Host memory free</span>
          <strong>
            {v.HostCapacity.FreeMemoryMB} of {v.HostCapacity.MemoryMB} MB
          </strong>
        </div>
      </div>
      <div class="grid">
        <Chart id="chart-rate" title="Request rate and N" data={s.rate} xLabel="Time (UTC)" yLabel="Requests/s, VMs" series={[{ label: 'Request rate (/s)' }, { label: 'N: warming pool target (VMs)' }]} />
        <Chart id="chart-pools" title="VMs per pool" data={s.pools} xLabel="Time (UTC)" yLabel="VMs" series={[{ label: 'Warming' }, { label: 'Active' }, { label: 'Retiring' }]} />
        <Chart id="chart-starts" title="Executions by start kind" data={s.starts} xLabel="Time (UTC)" yLabel="Executions/min" series={[{ label: 'Warm (/min)' }, { label: 'New container (/min)' }, { label: 'New VM (/min)' }]} />
        <Chart id="chart-memory" title="Host memory" data={s.memory} xLabel="Time (UTC)" yLabel="Memory (MB)" series={[{ label: 'Reserved by VMs (MB)' }, { label: 'Capacity (MB)', dash: [6, 4] }]} />
      </div>
      <h3>Active pool, by account</h3>
      {byAccount.size ? null : <p class="muted">No active VMs.</p>}
      {[...byAccount.entries()].map(([account, vms]) => (
        <div key={account} class="account">
          <h4>Account {account}</h4>
          <table>
            <thead>
              <tr>
                <th>VM</th>
                <th>Memory (MB)</th>
                <th>Free (MB)</th>
                <th>vCPUs</th>
                <th>Since</th>
                <th>Containers</th>
              </tr>
            </thead>
            <tbody>
              {vms.map((vm) => (
                <tr key={vm.VmId}>
                  <td>
                    <code>{vm.VmId}</code>
                    {vm.Booting ? ' (booting)' : ''}
                  </td>
                  <td class="num">{vm.MemoryMB}</td>
                  <td class="num">{vm.FreeMemoryMB}</td>
                  <td class="num">{vm.VCpus}</td>
                  <td>{fmtTime(vm.Since)}</td>
                  <td>{vm.Containers.map((c) => `${c.FunctionName} (${c.MemoryMB} MB, ${c.State})`).join(', ') || '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ))}
      <h3>Warming pool</h3>
      <table id="warming">
        <thead>
          <tr>
            <th>VM</th>
            <th>Memory (MB)</th>
            <th>vCPUs</th>
            <th>Runtime</th>
            <th>Since</th>
          </tr>
        </thead>
        <tbody>
          {v.WarmingPool.map((vm) => (
            <tr key={vm.VmId}>
              <td>
                <code>{vm.VmId}</code>
                {vm.Booting ? ' (booting)' : ''}
              </td>
              <td class="num">{vm.MemoryMB}</td>
              <td class="num">{vm.VCpus}</td>
              <td>{vm.Runtime || 'any'}</td>
              <td>{fmtTime(vm.Since)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>Retiring</h3>
      {v.Retiring.length ? (
        <table>
          <tbody>
            {v.Retiring.map((vm) => (
              <tr key={vm.VmId}>
                <td>
                  <code>{vm.VmId}</code>
                </td>
                <td class="num">{vm.MemoryMB} MB</td>
                <td>{fmtTime(vm.Since)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <p class="muted">None.</p>
      )}
    </section>
  );
}
