/**
 * `linewatch probe`: the box report and one timed inference of the shipped demo model
 * per configured provider, on this CPU-only machine (real onnxruntime, real ffmpeg).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProbeReport } from '../../src/agent/probe.js';
import { DEMO_MODEL, DEMO_VIDEO, runCli, writeConfig } from '../helpers/agent.js';

describe('linewatch probe', () => {
  let dir: string;
  let cpuConfig: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-probe-'));
    cpuConfig = writeConfig(path.join(dir, 'cpu.yaml'), {
      defaults: { model: DEMO_MODEL },
      // Two cameras on one model and provider list share one probe.
      cameras: [
        { name: 'line1', url: DEMO_VIDEO },
        { name: 'line2', url: DEMO_VIDEO },
      ],
    });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('prints every section and times the configured model on the CPU', () => {
    const result = runCli(['probe', '-c', cpuConfig]);
    expect(result.code, result.output).toBe(0);
    for (const section of [/^platform: \w+ \w+, kernel /m, /^cpu: .+, \d+ logical CPU/m, /^  features: /m, /^memory: [\d.]+ GiB total/m, /^node: v\d+/m, /^ffmpeg: /m]) {
      expect(result.stdout).toMatch(section);
    }
    expect(result.stdout).toMatch(/^onnxruntime [\d.]+ providers: cpu\b/m);
    expect(result.stdout).toContain(`models (${cpuConfig}):`);
    expect(result.stdout).toMatch(/^  line1, line2: .*models\/demo int8, 1 thread\(s\), providers cpu$/m);
    expect(result.stdout).toMatch(/^    cpu: ran on cpu; load \d+ ms, warm-up [\d.]+ ms, inference [\d.]+ ms$/m);
    expect(result.stdout).not.toMatch(/^problem:/m);
  });

  it('--json prints one object of the documented shape', () => {
    const result = runCli(['probe', '-c', cpuConfig, '--json']);
    expect(result.code, result.output).toBe(0);
    const report = JSON.parse(result.stdout) as ProbeReport;
    expect(Object.keys(report).sort()).toEqual(['config', 'cpu', 'ffmpeg', 'memory', 'models', 'node', 'onnxruntime', 'platform', 'problems']);
    expect(report.platform).toEqual({ os: process.platform, arch: process.arch, kernel: expect.any(String) });
    expect(report.cpu.model).toEqual(expect.any(String));
    expect(report.cpu.cores).toBeGreaterThan(0);
    expect(Array.isArray(report.cpu.features)).toBe(true);
    if (process.platform === 'linux' && process.arch === 'x64') expect(report.cpu.features).toContain('sse4_2');
    expect(report.memory.totalBytes).toBeGreaterThan(report.memory.freeBytes);
    expect(report.node).toBe(process.version);
    expect(report.ffmpeg.path).toBe('ffmpeg');
    expect(Array.isArray(report.ffmpeg.hwaccels) && Array.isArray(report.ffmpeg.hwDecoders)).toBe(true);
    if (report.ffmpeg.version !== null) expect(report.ffmpeg.version).toMatch(/^ffmpeg version /);
    else expect(report.ffmpeg.error).toMatch(/ffmpeg\.path/);
    expect(report.onnxruntime.version).toMatch(/^\d+\.\d+/);
    expect(report.onnxruntime.providers).toContain('cpu');
    expect(report.onnxruntime.external).not.toContain('cpu');
    expect(report.config).toBe(cpuConfig);
    expect(report.problems).toEqual([]);
    expect(report.models).toHaveLength(1);
    const [model] = report.models;
    expect(model).toMatchObject({ cameras: ['line1', 'line2'], model: DEMO_MODEL, variant: 'int8', threads: 1, providers: ['cpu'], fallback: true });
    expect(model!.runs).toHaveLength(1);
    const [run] = model!.runs;
    expect(run).toMatchObject({ provider: 'cpu', ranOn: 'cpu', notes: [] });
    expect(run!.error).toBeUndefined();
    for (const ms of [run!.loadMs, run!.warmUpMs, run!.inferenceMs]) expect(ms).toBeGreaterThan(0);
  });

  it('exits 2 naming the provider and the fix when a camera asks only for one that is missing here', () => {
    // cuda cannot start here: no NVIDIA GPU, and `npm ci` installs onnxruntime-node without its CUDA
    // provider libraries. coreml is in no Linux build of onnxruntime-node at all.
    const config = writeConfig(path.join(dir, 'cuda.yaml'), {
      defaults: { model: DEMO_MODEL },
      cameras: [
        { name: 'gpu-only', url: DEMO_VIDEO, providers: ['cuda'] },
        { name: 'gpu-first', url: DEMO_VIDEO, providers: ['cuda', 'cpu'] },
        { name: 'mac-only', url: DEMO_VIDEO, providers: ['coreml'] },
      ],
    });
    const result = runCli(['probe', '-c', config]);
    expect(result.code, result.output).toBe(2);
    expect(result.stdout).toMatch(
      /^problem: camera gpu-only: execution provider "cuda" (failed to start|is not available in this onnxruntime-node build) and the camera's providers \[cuda\] do not end with cpu \(no fallback\)$/m,
    );
    expect(result.stdout).toMatch(/^  hint: .*CUDA.*; or add cpu at the end of the camera's providers/m);
    if (process.platform !== 'darwin') {
      expect(result.stdout).toMatch(/^problem: camera mac-only: execution provider "coreml" is not available in this onnxruntime-node build .*\n  hint: coreml runs on macOS only/m);
    }
    // With cpu last the camera runs, slower: reported, not an error.
    expect(result.stdout).not.toMatch(/camera gpu-first/);
    expect(result.stdout).toMatch(/^    cuda: ran on cpu \(fell back: /m);

    const json = runCli(['probe', '-c', config, '--json']);
    expect(json.code, json.output).toBe(2);
    const report = JSON.parse(json.stdout) as ProbeReport;
    expect(report.problems).toHaveLength(process.platform === 'darwin' ? 1 : 2);
    expect(report.models.map((m) => [m.cameras, m.fallback, m.runs.map((r) => [r.provider, r.ranOn])])).toEqual([
      [['gpu-only'], false, [['cuda', 'cpu']]],
      [['gpu-first'], true, [['cuda', 'cpu'], ['cpu', 'cpu']]],
      [['mac-only'], false, [['coreml', process.platform === 'darwin' ? 'coreml' : 'cpu']]],
    ]);
    expect(json.stderr).toMatch(/linewatch: camera gpu-only: execution provider "cuda"/);
  });
});
