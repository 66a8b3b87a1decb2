'use strict'

// The baseline's PDK calls (bench/baseline_plugin.py) on Kong's JavaScript plugin server: the consumer,
// then the three request headers and the four response headers of credit-gate's allowed path, and
// nothing else. The server calls `access` with the `kong` object; each PDK call is one round trip to
// Kong, awaited.

class Plugin {
  constructor(config) {
    this.config = config
  }

  async access(kong) {
    const consumer = await kong.client.getConsumer()
    const account = consumer ? consumer.id : ''
    await kong.service.request.setHeaders({
      'X-Credit-Account': account,
      'X-Credit-Plan': 'bench-paid',
      'X-Credit-Charge-Id': '1767225600000-0',
    })
    await kong.response.setHeaders({
      'X-Credit-Cost': '1',
      'X-Credit-Balance': '999999999999',
      'X-Credit-Allowance-Remaining': '0',
      'X-Credit-Period-End': '2026-02-01T00:00:00Z',
    })
  }
}

module.exports = {
  Plugin,
  Name: 'baseline',
  Version: '0.1.0',
  Priority: 1,
  Schema: [],
}
