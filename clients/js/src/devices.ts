import type { RealtimeClient } from './client';
import type { Device } from './types';
import * as v from './validate';

/** Push devices (FCM registration tokens) of the user, over REST. */
export class Devices {
  constructor(private readonly _c: RealtimeClient) {}

  async register(device: { token: string; platform: 'ios' | 'android' | 'web'; appVersion?: string }): Promise<Device> {
    const d = v.object(device, 'device');
    const r = await this._c.http('POST', '/devices', {
      token: v.str(d.token, 'token', 4096),
      platform: v.oneOf(d.platform, 'platform', ['ios', 'android', 'web'] as const),
      app_version: v.opt(d.appVersion, (x) => v.str(x, 'appVersion', 64, 0)),
    });
    return r.device;
  }

  async unregister(token: string): Promise<void> {
    await this._c.http('DELETE', '/devices/' + encodeURIComponent(v.str(token, 'token', 4096)));
  }

  async list(): Promise<Device[]> {
    return (await this._c.http('GET', '/devices')).devices;
  }
}
