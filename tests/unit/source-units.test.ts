import { describe, expect, it } from 'vitest';

import { UsageError } from '../../src/errors.js';
import { backoffDelayMs, DEFAULT_BACKOFF } from '../../src/source/backoff.js';
import { buildFfmpegArgs, buildFrameFilter, classifyInput, frameByteLength, inputScript, rateCapFilter } from '../../src/source/ffmpeg-args.js';
import { failureDetail, LineRing, scrubCredentials, SourceSizeParser, stripLogPrefixes } from '../../src/source/ffmpeg-log.js';
import { FrameQueue } from '../../src/source/frame-queue.js';
import { FixedSizeFramer, JpegSplitter } from '../../src/source/frame-reader.js';

/** The value following `flag` in an argument list. */
function valueOf(args: string[], flag: string): string | undefined {
  const index = args.indexOf(flag);
  return index < 0 ? undefined : args[index + 1];
}

function inputSide(args: string[]): string[] {
  return args.slice(0, args.indexOf('-i'));
}

describe('classifyInput', () => {
  it.each([
    ['rtsp://cam/1', 'rtsp'],
    ['RTSPS://cam/1', 'rtsp'],
    ['http://cam/mjpeg', 'http'],
    ['https://cam/mjpeg', 'http'],
    ['/dev/video0', 'v4l2'],
    ['/dev/video12', 'v4l2'],
    ['/data/clip.mp4', 'file'],
    ['clip.mp4', 'file'],
    ['file:///data/clip.mp4', 'file'],
    ['srt://host:9000', 'stream'],
    ['rtmp://host/live', 'stream'],
  ] as const)('%s is %s', (url, kind) => {
    expect(classifyInput(url)).toBe(kind);
  });
});

describe('buildFfmpegArgs', () => {
  const base = { width: 64, height: 48 };

  it('RTSP: TCP by default, a socket timeout in microseconds, raw frames of the model size on pipe:1', () => {
    const args = buildFfmpegArgs({ ...base, url: 'rtsp://cam/1', fps: 5, ioTimeoutMs: 4000 });
    expect(args.slice(0, 8)).toEqual(['-hide_banner', '-nostdin', '-nostats', '-loglevel', 'level+info', '-thread_type', 'slice', '-rtsp_transport']);
    expect(valueOf(args, '-rtsp_transport')).toBe('tcp');
    expect(valueOf(args, '-timeout')).toBe('4000000');
    expect(valueOf(args, '-i')).toBe('rtsp://cam/1');
    expect(valueOf(args, '-filter_complex')).toBe(`[0:v:0]${rateCapFilter(5)},scale=64:48:flags=area,format=gray[frames]`);
    expect(args.slice(-7)).toEqual(['-map', '[frames]', '-fps_mode', 'passthrough', '-f', 'rawvideo', 'pipe:1']);
  });

  it('RTSP: no frame-rate probing before -i (it held the first frames back and released them in a burst)', () => {
    const args = inputSide(buildFfmpegArgs({ ...base, url: 'rtsp://cam/1', fps: 10 }));
    expect(valueOf(args, '-fpsprobesize')).toBe('0');
    expect(inputSide(buildFfmpegArgs({ ...base, url: '/data/a.mp4' }))).not.toContain('-fpsprobesize');
  });

  it('RTSP: UDP selectable; ffmpeg 4 gets -stimeout (its -timeout means "listen") and -vsync', () => {
    const args = buildFfmpegArgs({ ...base, url: 'rtsp://cam/1', rtspTransport: 'udp', ffmpegMajorVersion: 4 });
    expect(valueOf(args, '-rtsp_transport')).toBe('udp');
    expect(valueOf(args, '-stimeout')).toBe('5000000');
    expect(args).not.toContain('-timeout');
    expect(valueOf(args, '-vsync')).toBe('passthrough');
    expect(args).not.toContain('-fps_mode');
  });

  it('RTSP with a password: the URL and its options go to a concat script on pipe:4, nothing secret on the command line', () => {
    const url = "rtsp://op:it's%20secret@cam/1";
    const options = { ...base, url, rtspTransport: 'udp' as const, ioTimeoutMs: 3000, inputArgs: ['-fflags', 'nobuffer'] };
    const args = buildFfmpegArgs(options);
    expect(args.join(' ')).not.toContain('secret');
    expect(args.slice(args.indexOf('-f'), args.indexOf('-i') + 2)).toEqual(['-f', 'concat', '-safe', '0', '-protocol_whitelist', 'pipe,rtsp,rtsps,rtp,srtp,udp,tcp,tls,crypto', '-fflags', 'nobuffer', '-i', 'pipe:4']);
    expect(args).not.toContain('-rtsp_transport');
    expect(inputScript(options)).toBe(["ffconcat version 1.0", "file 'rtsp://op:it'\\''s%20secret@cam/1'", 'option rtsp_transport udp', 'option timeout 3000000', 'option fpsprobesize 0', ''].join('\n'));
    // A user alone, another kind of source, or an ffmpeg without -timeout for RTSP: the URL stays on the command line.
    for (const plain of [{ ...base, url: 'rtsp://op@cam/1' }, { ...base, url: 'http://op:pw@cam/mjpeg' }, { ...base, url: 'rtsp://op:pw@cam/1', ffmpegMajorVersion: 4 }]) {
      expect(inputScript(plain)).toBeUndefined();
      expect(valueOf(buildFfmpegArgs(plain), '-i')).toBe(plain.url);
    }
    expect(() => inputScript({ ...base, url: 'rtsp://op:pw@cam/1\nfile /etc/passwd' })).toThrow(UsageError);
  });

  it('file: as fast as possible by default; -re and -stream_loop -1 on request, before -i', () => {
    const plain = buildFfmpegArgs({ ...base, url: '/data/a.mp4' });
    expect(plain).not.toContain('-re');
    expect(plain).not.toContain('-stream_loop');
    expect(plain).not.toContain('-timeout');
    const looped = inputSide(buildFfmpegArgs({ ...base, url: 'file:///data/a.mp4', loop: true, realtime: true }));
    expect(looped).toContain('-re');
    expect(valueOf(looped, '-stream_loop')).toBe('-1');
    expect(valueOf(buildFfmpegArgs({ ...base, url: 'file:///data/a.mp4' }), '-i')).toBe('/data/a.mp4');
  });

  it('HTTP MJPEG and other network URLs get an I/O timeout; /dev/videoN is opened with v4l2', () => {
    expect(valueOf(buildFfmpegArgs({ ...base, url: 'http://cam/video.mjpg', ioTimeoutMs: 2500 }), '-rw_timeout')).toBe('2500000');
    const device = inputSide(buildFfmpegArgs({ ...base, url: '/dev/video0', device: { inputFormat: 'mjpeg', videoSize: '1280x720', framerate: 15 } }));
    expect(valueOf(device, '-f')).toBe('v4l2');
    expect(valueOf(device, '-input_format')).toBe('mjpeg');
    expect(valueOf(device, '-video_size')).toBe('1280x720');
    expect(valueOf(device, '-framerate')).toBe('15');
  });

  it('crop comes after the rate and before the scale; rgb24 output', () => {
    const filter = buildFrameFilter({ ...base, fps: 2.5, crop: { x: 10, y: 20, width: 300, height: 200 }, pixelFormat: 'rgb24' });
    expect(filter).toBe(`${rateCapFilter(2.5)},crop=300:200:10:20,scale=64:48:flags=area,format=rgb24`);
    expect(frameByteLength({ ...base, pixelFormat: 'rgb24' })).toBe(64 * 48 * 3);
    expect(frameByteLength(base)).toBe(64 * 48);
  });

  it('cropFraction lets ffmpeg resolve the crop against the actual source size', () => {
    expect(buildFrameFilter({ ...base, cropFraction: { x: 0.25, y: 0.1, width: 0.5, height: 0.8 } })).toBe(
      'crop=iw*0.5:ih*0.8:iw*0.25:ih*0.1,scale=64:48:flags=area,format=gray',
    );
  });

  it.each([
    ['none', []],
    ['nvidia', ['-hwaccel', 'cuda']],
    ['vaapi', ['-hwaccel', 'vaapi', '-hwaccel_device', '/dev/dri/renderD128']],
    ['jetson', ['-c:v', 'h264_nvv4l2dec']],
  ] as const)('hwaccel %s puts %j on the input side', (hwaccel, expected) => {
    const input = inputSide(buildFfmpegArgs({ ...base, url: 'rtsp://cam/1', hwaccel }));
    const offload = input.filter((arg) => ['-hwaccel', 'cuda', 'vaapi', '-hwaccel_device', '/dev/dri/renderD128', '-c:v', 'h264_nvv4l2dec'].includes(arg));
    expect(offload).toEqual(expected);
  });

  it('jetson follows the stream codec; CPU savers and escape hatches land where they apply', () => {
    const args = buildFfmpegArgs({
      ...base,
      url: 'rtsp://cam/1',
      hwaccel: 'jetson',
      inputCodec: 'hevc',
      keyframesOnly: true,
      decodeThreads: 1,
      inputArgs: ['-analyzeduration', '1000000'],
      outputArgs: ['-fps_mode', 'passthrough'],
    });
    const input = inputSide(args);
    expect(valueOf(input, '-c:v')).toBe('hevc_nvv4l2dec');
    expect(valueOf(input, '-skip_frame')).toBe('nokey');
    expect(valueOf(input, '-threads')).toBe('1');
    expect(input.slice(-2)).toEqual(['-analyzeduration', '1000000']);
    expect(args.slice(-3)).toEqual(['-fps_mode', 'passthrough', 'pipe:1']);
  });

  it('preview: a split filtergraph, full frame JPEGs capped at maxWidth on pipe:3', () => {
    const args = buildFfmpegArgs({ ...base, url: 'rtsp://cam/1', fps: 5, crop: { x: 0, y: 0, width: 100, height: 100 }, preview: { fps: 1, maxWidth: 320 } });
    expect(valueOf(args, '-filter_complex')).toBe(
      `[0:v:0]split=2[analysis][snapshot];[analysis]${rateCapFilter(5)},crop=100:100:0:0,scale=64:48:flags=area,format=gray[frames];` +
        `[snapshot]${rateCapFilter(1)},scale='min(320,iw)':-2:out_range=full,format=yuv420p[preview]`,
    );
    const previewOutput = args.slice(args.indexOf('pipe:1') + 1);
    expect(previewOutput[0]).toBe('-map');
    expect(previewOutput[1]).toBe('[preview]');
    expect(valueOf(previewOutput, '-fps_mode')).toBe('vfr');
    expect(valueOf(previewOutput, '-c:v')).toBe('mjpeg');
    expect(valueOf(previewOutput, '-f')).toBe('image2pipe');
    expect(previewOutput.at(-1)).toBe('pipe:3');
  });

  it.each([
    [{ width: 0 }, /width must be a positive integer/],
    [{ height: 1.5 }, /height must be a positive integer/],
    [{ fps: 0 }, /fps must be a positive number/],
    [{ crop: { x: -1, y: 0, width: 10, height: 10 } }, /crop.x must be a non-negative integer/],
    [{ crop: { x: 0, y: 0, width: 0, height: 10 } }, /crop.width must be a positive integer/],
    [{ hwaccel: 'cuda' }, /unknown hwaccel 'cuda'/],
    [{ pixelFormat: 'yuv' }, /unknown pixel format/],
    [{ url: ' ' }, /url is empty/],
    [{ preview: { quality: 40 } }, /preview.quality/],
    [{ cropFraction: { x: 0.6, y: 0, width: 0.5, height: 1 } }, /cropFraction .* is not inside the frame/],
    [{ cropFraction: { x: 0, y: 0, width: 1, height: 1 }, crop: { x: 0, y: 0, width: 8, height: 8 } }, /crop and cropFraction both set/],
  ])('rejects %j with a UsageError', (override, message) => {
    const call = () => buildFfmpegArgs({ url: 'rtsp://user:secret@cam/1', width: 64, height: 64, ...(override as object) });
    expect(call).toThrow(UsageError);
    expect(call).toThrow(message);
    try {
      call();
    } catch (error) {
      expect((error as UsageError).message).not.toContain('secret');
      expect((error as UsageError).hint).toBeTruthy();
    }
  });
});

describe('scrubCredentials', () => {
  it('hides user:password in URLs and password-like query parameters', () => {
    expect(scrubCredentials("Input #0, rtsp, from 'rtsp://admin:hunter2@10.0.0.5:554/Streaming/101':")).toBe(
      "Input #0, rtsp, from 'rtsp://***@10.0.0.5:554/Streaming/101':",
    );
    expect(scrubCredentials('http://cam/video.cgi?user=admin&password=hunter2&channel=1')).toBe('http://cam/video.cgi?user=admin&password=***&channel=1');
    expect(scrubCredentials('rtsps://u@cam/x?token=abc')).toBe('rtsps://***@cam/x?token=***');
    expect(scrubCredentials('rtsp://cam/no-credentials')).toBe('rtsp://cam/no-credentials');
  });
});

describe('LineRing', () => {
  it('keeps the last lines across chunk boundaries, splits on \\r, scrubs', () => {
    const ring = new LineRing(3);
    expect(ring.push('first\nsec')).toEqual(['first']);
    expect(ring.push('ond\rthird rtsp://a:b@h/x\n')).toEqual(['second', 'third rtsp://***@h/x']);
    ring.push('fourth\n\n\nfif');
    expect(ring.lines()).toEqual(['second', 'third rtsp://***@h/x', 'fourth']);
    expect(ring.flush()).toEqual(['fif']);
    expect(ring.lines()).toEqual(['third rtsp://***@h/x', 'fourth', 'fif']);
  });
});

describe('SourceSizeParser', () => {
  const log = [
    "[info] Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'clip.mp4':",
    '[info]   Duration: 00:00:39.86, start: 0.000000, bitrate: 101 kb/s',
    '[info]   Stream #0:0[0x1](eng): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 640x360 [SAR 1:1 DAR 16:9], 98 kb/s, 29.83 fps',
    '[info] Output #0, rawvideo, to \'pipe:1\':',
    '[info]   Stream #0:0: Video: rawvideo (Y800 / 0x30303859), gray(pc, progressive), 64x64 [SAR 16:9 DAR 16:9], q=2-31',
  ];

  it('reads the input video stream, not the scaled output, once per run', () => {
    const parser = new SourceSizeParser();
    const found = log.map((line) => parser.observe(line)).filter((size) => size !== undefined);
    expect(found).toEqual([{ width: 640, height: 360 }]);
    parser.reset();
    expect(parser.observe(log[2] ?? '')).toBeUndefined();
    expect(log.slice(0, 3).map((line) => parser.observe(line)).at(-1)).toEqual({ width: 640, height: 360 });
  });

  it('handles an RTSP stream line (no codec tag)', () => {
    const parser = new SourceSizeParser();
    parser.observe("[info] Input #0, rtsp, from 'rtsp://***@127.0.0.1:8554/cam':");
    expect(parser.observe('[info]   Stream #0:0: Video: h264 (High), yuv420p(progressive), 1920x1080, 30 fps, 30 tbr, 90k tbn')).toEqual({ width: 1920, height: 1080 });
  });
});

describe('failureDetail', () => {
  it('prefers the last error line and strips context and level tags', () => {
    const lines = [
      '[tcp @ 0x5570] [error] Connection to tcp://127.0.0.1:1?timeout=3000000 failed: Connection refused',
      '[error] rtsp://***@127.0.0.1:1/x: Connection refused',
      '[info] Exiting normally, received signal 15.',
    ];
    expect(failureDetail(lines)).toBe('rtsp://***@127.0.0.1:1/x: Connection refused');
    expect(failureDetail(['[info] something else'])).toBe('something else');
    expect(failureDetail([])).toBeUndefined();
    expect(stripLogPrefixes('[h264 @ 0x1] [warning] odd')).toBe('odd');
  });
});

describe('FixedSizeFramer', () => {
  it('cuts exact frames whatever the chunk boundaries, viewing whole frames without copying', () => {
    const frameBytes = 5;
    const stream = Uint8Array.from({ length: 23 }, (_, index) => index);
    for (const cuts of [[23], [1, 22], [4, 1, 5, 13], [7, 7, 7, 2], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3]]) {
      const framer = new FixedSizeFramer(frameBytes);
      const frames: Uint8Array[] = [];
      let offset = 0;
      for (const length of cuts) {
        frames.push(...framer.push(stream.subarray(offset, offset + length)));
        offset += length;
      }
      expect(frames.map((frame) => [...frame])).toEqual([0, 1, 2, 3].map((index) => [...stream.subarray(index * 5, index * 5 + 5)]));
      expect(framer.pendingBytes).toBe(3);
    }
    const chunk = Uint8Array.from({ length: 10 }, (_, index) => index);
    const [first] = new FixedSizeFramer(5).push(chunk);
    expect(first?.buffer).toBe(chunk.buffer);
  });

  it('reset drops a partial frame', () => {
    const framer = new FixedSizeFramer(4);
    framer.push(new Uint8Array([1, 2]));
    framer.reset();
    expect(framer.push(new Uint8Array([9, 9, 9, 9])).map((frame) => [...frame])).toEqual([[9, 9, 9, 9]]);
  });
});

describe('JpegSplitter', () => {
  const jpeg = (body: number[]) => [0xff, 0xd8, ...body, 0xff, 0xd9];

  it('splits concatenated JPEGs across chunk boundaries, skipping garbage and stuffed 0xFF bytes', () => {
    const first = jpeg([1, 0xff, 0x00, 2]);
    const second = jpeg([0xff, 0xd0, 3]);
    const stream = Uint8Array.from([0x42, ...first, ...second, 0xff]);
    for (let cut = 0; cut <= stream.length; cut += 1) {
      const splitter = new JpegSplitter();
      const images = [...splitter.push(stream.subarray(0, cut)), ...splitter.push(stream.subarray(cut))];
      expect(images.map((image) => [...image])).toEqual([first, second]);
    }
  });

  it('drops an unterminated image once it exceeds the bound', () => {
    const splitter = new JpegSplitter(16);
    expect(splitter.push(Uint8Array.from([0xff, 0xd8, ...new Array(20).fill(7)]))).toEqual([]);
    expect(splitter.push(Uint8Array.from(jpeg([5]))).map((image) => [...image])).toEqual([jpeg([5])]);
  });
});

describe('FrameQueue', () => {
  it('drop-oldest evicts and never grows past capacity', () => {
    const queue = new FrameQueue<number>(3);
    const evicted = [1, 2, 3, 4, 5].map((item) => queue.push(item));
    expect(evicted).toEqual([undefined, undefined, undefined, 1, 2]);
    expect(queue.length).toBe(3);
    expect([queue.shift(), queue.shift(), queue.shift(), queue.shift()]).toEqual([3, 4, 5, undefined]);
  });

  it('takeLatest returns the newest and reports the skipped ones', () => {
    const queue = new FrameQueue<number>(4);
    [1, 2, 3].forEach((item) => queue.push(item));
    expect(queue.takeLatest()).toEqual({ item: 3, skipped: 2 });
    expect(queue.length).toBe(0);
    expect(queue.takeLatest()).toEqual({ item: undefined, skipped: 0 });
  });

  it('pause keeps every item in order', () => {
    const queue = new FrameQueue<number>(2, 'pause');
    const evicted = [1, 2, 3, 4, 5].map((item) => queue.push(item));
    expect(evicted.every((item) => item === undefined)).toBe(true);
    expect(queue.isFull).toBe(true);
    expect(Array.from({ length: 5 }, () => queue.shift())).toEqual([1, 2, 3, 4, 5]);
  });
});

describe('backoffDelayMs', () => {
  it('grows exponentially to the cap; jitter only shortens', () => {
    const noJitter = () => 0;
    expect([0, 1, 2, 3, 4, 5, 6, 10].map((attempt) => backoffDelayMs(attempt, DEFAULT_BACKOFF, noJitter))).toEqual([
      1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000,
    ]);
    expect(backoffDelayMs(2, DEFAULT_BACKOFF, () => 1)).toBe(Math.round(4000 * (1 - DEFAULT_BACKOFF.jitter)));
    const delays = Array.from({ length: 200 }, () => backoffDelayMs(3));
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(8000 * (1 - DEFAULT_BACKOFF.jitter));
    expect(Math.max(...delays)).toBeLessThanOrEqual(8000);
    expect(new Set(delays).size).toBeGreaterThan(1);
  });
});
