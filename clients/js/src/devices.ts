import type { RealtimeClient } from './client';
import type { Device, DeviceInfo } from './types';
import * as v from './validate';

const DEVICE_INFO_FIELDS = ['model', 'os', 'os_version', 'app_version'] as const;

function deviceInfo(x: unknown): DeviceInfo {
  const info = v.object(x, 'deviceInfo');
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(info)) {
    if (!(DEVICE_INFO_FIELDS as readonly string[]).includes(key)) {
      throw v.invalid(`deviceInfo.${key.slice(0, 64)}`, `must be one of ${DEVICE_INFO_FIELDS.join(', ')}`);
    }
    if (value !== undefined) out[key] = v.str(value, `deviceInfo.${key}`, 1024, 0);
  }
  return out;
}

/** Push devices (FCM registration tokens) of the user, over REST. */
export class Devices {
  constructor(private readonly _c: RealtimeClient) {}

  async register(device: {
    token: string;
    platform: 'ios' | 'android' | 'web';
    appVersion?: string;
    /** The device as the device lists show it: `{model?, os?, os_version?, app_version?}`. */
    deviceInfo?: DeviceInfo;
  }): Promise<Device> {
    const d = v.object(device, 'device');
    const r = await this._c.http('POST', '/devices', {
      token: v.str(d.token, 'token', 4096),
      platform: v.oneOf(d.platform, 'platform', ['ios', 'android', 'web'] as const),
      app_version: v.opt(d.appVersion, (x) => v.str(x, 'appVersion', 64, 0)),
      device_info: v.opt(d.deviceInfo, (x) => deviceInfo(x)),
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
