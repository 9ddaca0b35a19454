import { describe, expect, it } from 'vitest';
import { isSecretName, scrubSecrets } from '../../src/redact.js';
import { redactUrl } from '../../src/publish/mqtt.js';
import { LineRing, scrubCredentials } from '../../src/source/ffmpeg-log.js';

describe('scrubSecrets', () => {
  it.each([
    ['rtsp://admin:hunter2@10.0.0.5:554/Streaming/101', 'rtsp://***@10.0.0.5:554/Streaming/101'],
    // A password holding @ and : must go entirely, not up to its first @.
    ['rtsp://viewer:pa:ss@word@192.168.1.64:554/s', 'rtsp://***@192.168.1.64:554/s'],
    ['rtsps://tokenonly@cam/x', 'rtsps://***@cam/x'],
    // An apostrophe is legal in userinfo, and ffmpeg quotes the URL with apostrophes.
    ["'rtsp://op:it's@cam/s'", "'rtsp://***@cam/s'"],
    ['mqtts://user:pw@broker:8883', 'mqtts://***@broker:8883'],
    ['wss://user:pw@broker/mqtt', 'wss://***@broker/mqtt'],
    ['srt://u:p@host:9000', 'srt://***@host:9000'],
    ['rtsp:/admin:pw@cam/s', 'rtsp:/***@cam/s'],
    ['http://cam/video.cgi?user=admin&pwd=hunter2&channel=1', 'http://cam/video.cgi?user=admin&pwd=***&channel=1'],
    ['http://cam/x?password=a&pass=b&passwd=c&token=d&key=e&auth=f', 'http://cam/x?password=***&pass=***&passwd=***&token=***&key=***&auth=***'],
    ['http://cam/x?access_token=a&x-api-key=b&apiKey=c&client_secret=d&sig=e', 'http://cam/x?access_token=***&x-api-key=***&apiKey=***&client_secret=***&sig=***'],
    ['http://cam/x?PWD=a#frag', 'http://cam/x?PWD=***#frag'],
    ['http://cam/x?pwd=a:b:c', 'http://cam/x?pwd=***'],
    ['rtsp://cam/no-credentials', 'rtsp://cam/no-credentials'],
    ['http://cam/x?monkey=1&keyint=2&channel=3', 'http://cam/x?monkey=1&keyint=2&channel=3'],
    ['/data/clip.mp4', '/data/clip.mp4'],
  ])('%s', (input, scrubbed) => {
    expect(scrubSecrets(input)).toBe(scrubbed);
    // Idempotent: scrubbing scrubbed text changes nothing.
    expect(scrubSecrets(scrubbed)).toBe(scrubbed);
  });

  it('finds credentials inside free text, such as ffmpeg stderr lines and error messages', () => {
    expect(scrubSecrets("[error] Input #0, rtsp, from 'rtsp://admin:hunter2@10.0.0.5:554/s?pwd=x1&ch=1': failed")).toBe(
      "[error] Input #0, rtsp, from 'rtsp://***@10.0.0.5:554/s?pwd=***&ch=1': failed",
    );
    expect(scrubSecrets('[tcp @ 0x55d] Connection to tcp://a:b@127.0.0.1:1?timeout=0 failed')).toBe(
      '[tcp @ 0x55d] Connection to tcp://***@127.0.0.1:1?timeout=0 failed',
    );
    expect(scrubSecrets('two: rtsp://a:b@h1/x and http://c:d@h2/y?token=t')).toBe('two: rtsp://***@h1/x and http://***@h2/y?token=***');
    expect(scrubSecrets('inputArgs -headers "Authorization: Basic dXNlcjpwdw=="')).toBe('inputArgs -headers "Authorization: Basic ***"');
    expect(scrubSecrets('password=hunter2 given')).toBe('password=*** given');
  });

  it('names secret parameters by their words, not by substrings', () => {
    for (const name of ['pwd', 'Password', 'access_token', 'authToken', 'x-api-key', 'apikey', 'clientsecret', 'sig', 'key']) {
      expect(isSecretName(name), name).toBe(true);
    }
    for (const name of ['user', 'channel', 'monkey', 'keyint', 'subtype', 'passive']) expect(isSecretName(name), name).toBe(false);
  });

  it('is the scrubber behind every older name: ffmpeg lines, the MQTT broker URL', () => {
    const url = 'mqtt://agent:brokerpw@broker:1883/?token=abc';
    expect(redactUrl(url)).toBe(scrubSecrets(url));
    expect(redactUrl('ws://u:p@broker/mqtt')).toBe('ws://***@broker/mqtt');
    expect(scrubCredentials).toBe(scrubSecrets);
    const ring = new LineRing(5);
    expect(ring.push("[error] rtsp://a:b@cam/s?pwd=hunter2: 401 Unauthorized\n")).toEqual(['[error] rtsp://***@cam/s?pwd=***: 401 Unauthorized']);
  });
});
