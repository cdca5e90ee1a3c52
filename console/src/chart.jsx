// A time or value chart drawn by uPlot: titled, with axis labels carrying units and a legend.
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export const COLORS = ['#d9480f', '#1971c2', '#2f9e44', '#9c36b5', '#f08c00', '#495057'];

/**
 * `data`: uPlot's columns ([xs, ys1, ys2, …]); `series`: [{label, color?, points?, dash?}];
 * `xLabel`, `yLabel` name the axes with their units; `time`: x is epoch seconds.
 */
export function Chart({ title, data, series, xLabel, yLabel, time = true, height = 220, points = false, id }) {
  const box = useRef(null);
  const plot = useRef(null);
  const shape = JSON.stringify([title, series, xLabel, yLabel, time, points]);
  useEffect(() => {
    const width = Math.max(320, (box.current.clientWidth || 600) - 8);
    const opts = {
      title,
      width,
      height,
      scales: {
        // One point alone would span years: give it a minute either side.
        x: { time, range: (u, min, max) => (min === max ? [min - 60, max + 60] : [min, max]) },
        // Amounts start at zero, so a small value looks small.
        y: { range: (u, min, max) => [Math.min(0, min ?? 0), Math.max(1, (max ?? 0) * 1.1)] },
      },
      // Times are shown in UTC, as the rest of the console and Ember's logs show them.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'),
      axes: [
        { label: xLabel, stroke: '#444', grid: { stroke: '#eee' } },
        { label: yLabel, stroke: '#444', grid: { stroke: '#eee' }, size: 60 },
      ],
      series: [
        { label: xLabel },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || COLORS[i % COLORS.length],
          width: 2,
          dash: s.dash,
          points: { show: s.points ?? points, size: 6 },
          paths: s.points ? () => null : undefined,
          spanGaps: true,
        })),
      ],
    };
    plot.current = new uPlot(opts, data, box.current);
    const resize = () => plot.current && plot.current.setSize({ width: Math.max(320, box.current.clientWidth - 8), height });
    window.addEventListener('resize', resize);
    return () => {
      window.removeEventListener('resize', resize);
      plot.current.destroy();
      plot.current = null;
    };
  }, [shape]);
  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  }, [data]);
  return <div class="chart" ref={box} id={id} />;
}
