-- kenning for Neovim: starts `kenning serve` through vim.lsp.config/vim.lsp.enable (Neovim 0.11+),
-- shows ghost text with vim.lsp.inline_completion (Neovim 0.12+), accepts it with <Tab>, and adds
-- :KenningAsk, :KenningStatus and :KenningReindex.
--
--   require('kenning').setup({
--     cmd = { 'kenning' },                 -- the binary (serve is its default command)
--     settings = { completion = { debounce_ms = 75 } },  -- the kenning.toml schema, as a table
--     accept_key = '<Tab>',                -- false to map nothing
--   })

local M = {}

M.defaults = {
  cmd = { 'kenning' },
  -- nil: every filetype
  filetypes = nil,
  root_markers = { 'kenning.toml', '.git' },
  settings = {},
  inline = true,
  accept_key = '<Tab>',
}

local function client_for(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = 'kenning' })[1]
end

--- Shows an answer in a scratch split and its sources in the quickfix list.
local function show_answer(result)
  local lines = vim.split(result.rendered or result.answer or '', '\n', { plain = true })
  vim.cmd('botright new')
  local buf = vim.api.nvim_get_current_buf()
  vim.bo[buf].buftype = 'nofile'
  vim.bo[buf].bufhidden = 'wipe'
  vim.bo[buf].filetype = 'markdown'
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  local items = {}
  for _, s in ipairs(result.sources or {}) do
    if s.uri ~= vim.NIL and s.uri then
      table.insert(items, {
        filename = vim.uri_to_fname(s.uri),
        lnum = s.startLine,
        end_lnum = s.endLine,
        text = string.format('[%d] %s', s.number, s.symbol ~= '' and s.symbol or s.path),
      })
    end
  end
  vim.fn.setqflist({}, ' ', { title = 'kenning: ' .. (result.question or ''), items = items })
end

--- Asks a question about the code (the answer streams as progress, then opens in a split).
function M.ask(question)
  local client = client_for(0)
  if not client then
    vim.notify('kenning is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  local args = { { question = question, uri = vim.uri_from_bufnr(0) } }
  client:request('workspace/executeCommand', { command = 'kenning.ask', arguments = args }, function(err, result)
    if err then
      vim.notify('kenning: ' .. err.message, vim.log.levels.ERROR)
    elseif result then
      show_answer(result)
    end
  end)
end

local function command(name)
  local client = client_for(0)
  if not client then
    vim.notify('kenning is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  client:request('workspace/executeCommand', { command = name, arguments = {} }, function(err, result)
    if err then
      vim.notify('kenning: ' .. err.message, vim.log.levels.ERROR)
    else
      vim.notify(vim.inspect(result))
    end
  end)
end

function M.setup(opts)
  opts = vim.tbl_deep_extend('force', M.defaults, opts or {})
  vim.lsp.config('kenning', {
    cmd = opts.cmd,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    init_options = opts.settings,
    settings = { kenning = opts.settings },
  })
  vim.lsp.enable('kenning')

  vim.api.nvim_create_autocmd('LspAttach', {
    group = vim.api.nvim_create_augroup('kenning', { clear = true }),
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if not client or client.name ~= 'kenning' then
        return
      end
      if opts.inline and vim.lsp.inline_completion then
        vim.lsp.inline_completion.enable(true, { bufnr = ev.buf })
        if opts.accept_key then
          vim.keymap.set('i', opts.accept_key, function()
            if not vim.lsp.inline_completion.get() then
              return opts.accept_key
            end
          end, { expr = true, buffer = ev.buf, desc = 'kenning: accept the completion' })
        end
      end
    end,
  })

  vim.api.nvim_create_user_command('KenningAsk', function(c)
    M.ask(c.args)
  end, { nargs = '+', desc = 'Ask kenning about the code' })
  vim.api.nvim_create_user_command('KenningStatus', function()
    command('kenning.status')
  end, { desc = 'What kenning has indexed' })
  vim.api.nvim_create_user_command('KenningReindex', function()
    command('kenning.reindex')
  end, { desc = 'Re-index the workspace now' })
end

return M
