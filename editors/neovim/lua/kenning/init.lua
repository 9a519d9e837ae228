-- kenning for Neovim: starts `kenning serve` through vim.lsp.config/vim.lsp.enable (Neovim 0.11+),
-- shows ghost text with vim.lsp.inline_completion (0.12+; completion items on 0.11), accepts it with
-- <Tab>, and adds :KenningAsk, :KenningExplain, :KenningIndex, :KenningStatus, :KenningTrain.
-- See :help kenning.

local M = {}

M.defaults = {
  cmd = { 'kenning' },
  -- nil: every filetype
  filetypes = nil,
  root_markers = { 'kenning.toml', '.git' },
  -- kenning's configuration (the kenning.toml schema) as a table
  settings = {},
  inline = true,
  accept_key = '<Tab>',
  -- show indexing progress with vim.notify (false: quiet; the state is in M.progress either way)
  notify_progress = false,
}

--- The latest progress message per client (for statuslines): `require('kenning').progress`.
M.progress = nil

M.options = vim.deepcopy(M.defaults)

local function client_for(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = 'kenning' })[1]
    or vim.lsp.get_clients({ name = 'kenning' })[1]
end

--- Sources of an answer as quickfix items.
function M.quickfix_items(result)
  local items = {}
  for _, s in ipairs(result.sources or {}) do
    if s.uri and s.uri ~= vim.NIL then
      table.insert(items, {
        filename = vim.uri_to_fname(s.uri),
        lnum = s.startLine,
        end_lnum = s.endLine,
        text = string.format('[%d] %s', s.number, (s.symbol ~= nil and s.symbol ~= '') and s.symbol or s.path),
      })
    end
  end
  return items
end

--- Shows an answer in a floating window and its citations in the quickfix list.
local function show_answer(result)
  local lines = vim.split(result.rendered or result.answer or '', '\n', { plain = true })
  vim.fn.setqflist({}, ' ', { title = 'kenning: ' .. vim.split(result.question or '', '\n')[1], items = M.quickfix_items(result) })
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].filetype = 'markdown'
  vim.bo[buf].bufhidden = 'wipe'
  local width = math.min(100, math.floor(vim.o.columns * 0.8))
  local height = math.min(#lines + 1, math.floor(vim.o.lines * 0.6))
  local win = vim.api.nvim_open_win(buf, true, {
    relative = 'editor',
    width = math.max(width, 20),
    height = math.max(height, 3),
    row = math.floor((vim.o.lines - height) / 2),
    col = math.floor((vim.o.columns - width) / 2),
    style = 'minimal',
    border = 'rounded',
    title = ' kenning ',
  })
  vim.wo[win].wrap = true
  vim.keymap.set('n', 'q', '<cmd>close<cr>', { buffer = buf, nowait = true })
end

--- Asks a question about the code. `callback(result)` replaces the default display.
function M.ask(question, callback)
  local client = client_for(0)
  if not client then
    vim.notify('kenning is not running for this buffer', vim.log.levels.WARN)
    return
  end
  local args = { { question = question, uri = vim.uri_from_bufnr(0) } }
  client:request('workspace/executeCommand', { command = 'kenning.ask', arguments = args }, function(err, result)
    if err then
      vim.notify('kenning: ' .. err.message, vim.log.levels.ERROR)
    elseif result then
      (callback or show_answer)(result)
    end
  end)
end

--- Explains the lines `first`..`last` of the current buffer.
function M.explain(first, last)
  local lines = vim.api.nvim_buf_get_lines(0, first - 1, last, false)
  local fence = '```' .. (vim.bo.filetype or '')
  M.ask('Explain what this code does:\n' .. fence .. '\n' .. table.concat(lines, '\n') .. '\n```')
end

local function command(name, show)
  local client = client_for(0)
  if not client then
    vim.notify('kenning is not running', vim.log.levels.WARN)
    return
  end
  client:request('workspace/executeCommand', { command = name, arguments = {} }, function(err, result)
    if err then
      vim.notify('kenning: ' .. err.message, vim.log.levels.ERROR)
    elseif show then
      vim.notify(vim.inspect(result))
    end
  end)
end

--- `kenning train`'s command line for the workspace at `root`, `extra` appended: the generation
--- settings given to setup() go along as the server gets them (`--set`), so that the model this
--- editor completes with is the one fine-tuned, and the one its adapter is measured against.
--- The binary and its global flags (`--cache-dir`, ...) are `cmd`'s, `serve` left out wherever it
--- is (it takes no arguments; global flags may come after it). A `cmd` given as a function has no
--- command line to take them from: an error says so.
function M.train_cmd(root, extra)
  if type(M.options.cmd) ~= 'table' then
    error('kenning: :KenningTrain needs `cmd` as a list (the kenning binary and its flags), not a function')
  end
  local cmd = vim.tbl_filter(function(arg)
    return arg ~= 'serve'
  end, M.options.cmd)
  vim.list_extend(cmd, { 'train', root })
  local generation = M.options.settings.generation or {}
  local keys = vim.tbl_keys(generation)
  table.sort(keys)
  for _, key in ipairs(keys) do
    vim.list_extend(cmd, { '--set', string.format('generation.%s=%s', key, vim.json.encode(generation[key])) })
  end
  return vim.list_extend(cmd, extra or {})
end

--- Fine-tunes the model on the workspace (`kenning train`) in a terminal split, where its progress
--- shows; the adapter is switched on for completions only if it measures better.
function M.train(extra)
  local client = client_for(0)
  local root = (client and client.root_dir) or vim.fs.root(0, M.options.root_markers) or vim.fn.getcwd()
  local cmd = M.train_cmd(root, extra)
  vim.cmd('botright new')
  vim.fn.jobstart(cmd, { term = true })
end

local function on_attach(client, bufnr)
  if M.options.inline and vim.lsp.inline_completion then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    if M.options.accept_key then
      vim.keymap.set('i', M.options.accept_key, function()
        if not vim.lsp.inline_completion.get() then
          return M.options.accept_key
        end
      end, { expr = true, buffer = bufnr, desc = 'kenning: accept the completion' })
    end
  elseif vim.lsp.completion then
    -- Neovim 0.11: kenning's completion arrives as a completion item.
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true })
  end
end

function M.setup(opts)
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  vim.lsp.config('kenning', {
    cmd = M.options.cmd,
    filetypes = M.options.filetypes,
    root_markers = M.options.root_markers,
    init_options = M.options.settings,
    settings = { kenning = M.options.settings },
  })
  vim.lsp.enable('kenning')

  local group = vim.api.nvim_create_augroup('kenning', { clear = true })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == 'kenning' then
        on_attach(client, ev.buf)
      end
    end,
  })
  vim.api.nvim_create_autocmd('LspProgress', {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if not client or client.name ~= 'kenning' then
        return
      end
      local value = ev.data.params.value or {}
      M.progress = { kind = value.kind, title = value.title, message = value.message, percentage = value.percentage }
      if M.options.notify_progress and (value.kind == 'begin' or value.kind == 'end') then
        vim.notify(string.format('%s: %s', value.title or 'kenning', value.message or value.kind))
      end
    end,
  })

  vim.api.nvim_create_user_command('KenningAsk', function(c)
    M.ask(c.args)
  end, { nargs = '+', desc = 'kenning: ask about the code (answer in a float, citations in quickfix)' })
  vim.api.nvim_create_user_command('KenningExplain', function(c)
    M.explain(c.line1, c.line2)
  end, { range = true, desc = 'kenning: explain the selected lines' })
  vim.api.nvim_create_user_command('KenningIndex', function()
    command('kenning.reindex', false)
  end, { desc = 'kenning: re-index the workspace now' })
  vim.api.nvim_create_user_command('KenningStatus', function()
    command('kenning.status', true)
  end, { desc = 'kenning: what is indexed, which model' })
  vim.api.nvim_create_user_command('KenningTrain', function(c)
    M.train(c.fargs)
  end, { nargs = '*', desc = 'kenning: fine-tune the completion model on this workspace (kenning train [FLAGS])' })
end

return M
