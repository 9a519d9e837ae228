-- :checkhealth kenning — the binary, its assets, the running server and its index.

local M = {}

function M.check()
  local health = vim.health
  local opts = require('kenning').options
  health.start('kenning')

  if vim.fn.has('nvim-0.11') == 0 then
    health.error('Neovim 0.11 or newer is needed (vim.lsp.config)')
  elseif not vim.lsp.inline_completion then
    health.warn('Neovim 0.12 is needed for ghost text; completion items are used instead')
  else
    health.ok('Neovim has vim.lsp.inline_completion (ghost text)')
  end

  local bin = opts.cmd[1]
  if vim.fn.executable(bin) == 0 then
    health.error(string.format('kenning binary not found: %s', bin), { 'Build it with scripts/quickstart, or set cmd in setup()' })
    return
  end
  local args = { bin }
  for i = 2, #opts.cmd do
    if opts.cmd[i] ~= 'serve' then
      table.insert(args, opts.cmd[i])
    end
  end
  local version = vim.system({ bin, '--version' }, { text = true }):wait()
  health.ok(string.format('binary: %s (%s)', vim.fn.exepath(bin), vim.trim(version.stdout or '')))
  table.insert(args, 'status')
  table.insert(args, '--json')
  local status = vim.system(args, { text = true, cwd = vim.fn.getcwd() }):wait()
  local ok, parsed = pcall(vim.json.decode, status.stdout or '')
  if ok and type(parsed) == 'table' and parsed.assets then
    local missing = {}
    for _, a in ipairs(parsed.assets) do
      if not a.ok then
        table.insert(missing, a.name)
      end
    end
    if #missing == 0 then
      health.ok('models and runtime: all pinned assets in place')
    else
      health.error('missing assets: ' .. table.concat(missing, ', '), { 'Run scripts/setup in the kenning repository' })
    end
    -- The models kenning.toml here names (settings from setup() are checked by the server below).
    if parsed.config_error and parsed.config_error ~= vim.NIL then
      health.error('kenning.toml: ' .. parsed.config_error)
    end
    for _, m in ipairs(parsed.models or {}) do
      if m.ok then
        health.ok(string.format('model [%s] %s: %s', m.key, m.model, m.state))
      else
        health.warn(string.format('model [%s] %s: %s', m.key, m.model, m.state))
      end
    end
  else
    health.info('`kenning status --json` gave no asset list here (no index for this directory yet?)')
  end

  local client = vim.lsp.get_clients({ name = 'kenning' })[1]
  if not client then
    health.warn('the server is not running (open a file in a workspace with a .git or kenning.toml)')
    return
  end
  health.ok(string.format('server running (client %d, root %s)', client.id, client.root_dir or '?'))
  local response = client:request_sync('workspace/executeCommand', { command = 'kenning.status', arguments = {} }, 5000)
  if not response or response.err or not response.result then
    health.error('the server did not answer kenning.status')
    return
  end
  local model = response.result.model
  if type(model) == 'table' then
    if model.error then
      health.error('model: ' .. model.error)
    elseif model.loading then
      health.info('model: loading ' .. model.loading .. ' (a hub model may be downloading)')
    elseif model.loaded and model.loaded ~= vim.NIL then
      health.ok('model: ' .. model.loaded)
    else
      health.info('model: none configured (answers are extractive)')
    end
  else
    health.info('model: loaded on the first completion')
  end
  for _, root in ipairs(response.result.roots or {}) do
    local index = root.index ~= vim.NIL and root.index or nil
    local error = root.error ~= vim.NIL and root.error or nil
    if error then
      health.error(string.format('%s: indexing failed: %s', root.path, error))
    elseif root.indexing then
      health.info(string.format('%s: indexing…', root.path))
    elseif index then
      health.ok(string.format('%s: %d files, %d chunks, %d vectors', root.path, index.files, index.chunks, index.vectors))
    else
      health.warn(string.format('%s: not indexed yet', root.path))
    end
  end
end

return M
