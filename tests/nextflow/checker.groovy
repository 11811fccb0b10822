/*
 * Static checker for the exo2micro Nextflow code (tests/nextflow/README.md). Nextflow itself
 cannot be installed
 * on the development machines, so this drives the real strict-syntax parser of the Nextflow
 * language server (the one behind `nextflow lint`) from language-server-all.jar:
 *
 *   java -cp language-server-all.jar groovy.ui.GroovyMain checker.groovy \
 *        [--dump out.json] [--case NAME] FILE... [--case NAME FILE...]
 *
 * Every `--case` is checked independently (fresh parsers), so one JVM can check the project and
 * many planted mistakes. FILEs ending in .nf are scripts, *.nf.test files (nf-test) get the
 * Groovy parse only, the others are config files.
 *
 * Passes, each reported as a rule name:
 *   groovy-parse        plain Groovy parse of every file (the Nextflow parser accepts a stray
 *                       top-level `}`; Groovy does not)
 *   nf-error/nf-warning strict-syntax parse + include resolution + name resolution + type checks
 *                       (nextflow.script.control.ScriptParser); warnings count as findings
 *   config-error/config-warning
 *                       nextflow.config.control.ConfigParser
 *   config-option       unknown config options (the language server's config spec)
 *   emit                PROC.out.NAME where NAME is not an `emit:` of PROC (or of a workflow)
 *   undefined-call      call of a process/workflow name that is neither defined nor included
 *   process-tag / process-label / process-stub / process-shell / process-ext-args /
 *   process-threads / process-emit
 *                       house rules: every process has tag "${meta.id}", a label, a stub, no
 *                       shell: section, uses task.ext.args, passes --threads ${task.cpus}, and
 *                       names every output with emit:
 *   channel-capital     `Channel` instead of `channel`
 *   implicit-it         a closure using the implicit `it` parameter
 *   params-scope        `params` used outside the entry workflow
 *
 * Output: one line per finding, `FINDING<TAB>case<TAB>rule<TAB>file<TAB>line<TAB>message`, then
 * `CASE<TAB>case<TAB>findings<TAB>files`. Exit status 1 when there is any finding.
 * With --dump, a JSON description of every process, workflow and function (outputs, stub parts,
 * strings of the script) is written for the contract tests.
 */

import groovy.json.JsonOutput
import nextflow.config.control.ConfigParser
import nextflow.lsp.services.config.ConfigSpecVisitor
import nextflow.lsp.spec.PluginSpecCache
import nextflow.script.ast.ASTUtils
import nextflow.script.ast.FunctionNode
import nextflow.script.ast.ProcessNode
import nextflow.script.ast.ProcessNodeV1
import nextflow.script.ast.ScriptNode
import nextflow.script.ast.WorkflowNode
import nextflow.script.control.ScriptParser
import org.codehaus.groovy.ast.ASTNode
import org.codehaus.groovy.ast.CodeVisitorSupport
import org.codehaus.groovy.ast.expr.ClassExpression
import org.codehaus.groovy.ast.expr.ClosureExpression
import org.codehaus.groovy.ast.expr.ConstantExpression
import org.codehaus.groovy.ast.expr.Expression
import org.codehaus.groovy.ast.expr.GStringExpression
import org.codehaus.groovy.ast.expr.MapEntryExpression
import org.codehaus.groovy.ast.expr.MethodCallExpression
import org.codehaus.groovy.ast.expr.PropertyExpression
import org.codehaus.groovy.ast.expr.VariableExpression
import org.codehaus.groovy.ast.stmt.ExpressionStatement
import org.codehaus.groovy.ast.stmt.Statement
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.MultipleCompilationErrorsException
import org.codehaus.groovy.control.Phases
import org.codehaus.groovy.control.SourceUnit
import org.codehaus.groovy.control.messages.ExceptionMessage
import org.codehaus.groovy.control.messages.SyntaxErrorMessage
import org.codehaus.groovy.syntax.SyntaxException

// ------------------------------------------------------------------------------------------
// findings

class Findings {
    String caseName
    List<List> items = []

    void add(String rule, String file, int line, String message) {
        items << [rule, file, line, message.readLines().find { l -> l.trim() } ?: message]
    }
}

String relPath(String path) {
    def cwd = new File('.').canonicalFile.toPath()
    def p = new File(path.startsWith('file:') ? new URI(path).path : path).canonicalFile.toPath()
    return p.startsWith(cwd) ? cwd.relativize(p).toString() : p.toString()
}

String sourceName(SourceUnit su) {
    return relPath(su.getName())
}

void collectMessages(SourceUnit su, Findings findings, String errorRule, String warningRule) {
    def name = sourceName(su)
    def ec = su.getErrorCollector()
    ec.getErrors()?.each { msg ->
        if (msg instanceof SyntaxErrorMessage) {
            SyntaxException cause = msg.getCause()
            findings.add(errorRule, name, cause.getStartLine(), cause.getOriginalMessage() ?: cause.getMessage())
        }
        else if (msg instanceof ExceptionMessage) {
            findings.add(errorRule, name, 0, String.valueOf(msg.getCause()))
        }
        else {
            def sw = new StringWriter()
            msg.write(new PrintWriter(sw))
            findings.add(errorRule, name, 0, sw.toString())
        }
    }
    ec.getWarnings()?.each { w ->
        def rule = warningRule
        def text = w.getMessage()
        if (text.startsWith('Unrecognized config option')) {
            rule = 'config-option'
        }
        findings.add(rule, name, w.getContext()?.getStartLine() ?: 0, text)
    }
}

// ------------------------------------------------------------------------------------------
// pass 1: plain Groovy parse

void groovyParse(File file, Findings findings) {
    def cu = new CompilationUnit(new CompilerConfiguration())
    cu.addSource(file)
    try {
        cu.compile(Phases.CONVERSION)
    }
    catch (MultipleCompilationErrorsException e) {
        e.getErrorCollector().getErrors().each { msg ->
            if (msg instanceof SyntaxErrorMessage) {
                def cause = msg.getCause()
                def text = (cause.getOriginalMessage() ?: cause.getMessage()).readLines()[0]
                findings.add('groovy-parse', relPath(file.path), cause.getStartLine(), text.take(160))
            }
            else {
                findings.add('groovy-parse', relPath(file.path), 0, String.valueOf(msg).take(160))
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// AST helpers

class Emits {
static List<String> emitNames(ASTNode target) {
    if (target instanceof ProcessNodeV1) {
        return ASTUtils.asBlockStatements(target.outputs).collect { stmt ->
            def call = ASTUtils.asMethodCallX(stmt)
            def emit = call ? ASTUtils.asNamedArgs(call).find { e -> e.keyExpression.text == 'emit' } : null
            emit ? emit.valueExpression.text : null
        }.findAll { n -> n }
    }
    if (target instanceof WorkflowNode) {
        return ASTUtils.asBlockStatements(target.emits).collect { stmt ->
            def expr = stmt instanceof ExpressionStatement ? stmt.expression : null
            if (expr instanceof VariableExpression) {
                return expr.name
            }
            if (expr instanceof org.codehaus.groovy.ast.expr.BinaryExpression) {
                return expr.leftExpression.text
            }
            return null
        }.findAll { n -> n }
    }
    return null
}
}

class RuleVisitor extends CodeVisitorSupport {
    Findings findings
    String file
    SourceUnit su
    String scope            // 'entry', 'workflow', 'process', 'function'
    Set<String> callables   // process/workflow names visible in this file
    List<ClosureExpression> closures = []

    void visitPropertyExpression(PropertyExpression pe) {
        def obj = pe.objectExpression
        if (obj instanceof PropertyExpression && obj.objectExpression instanceof VariableExpression
                && obj.propertyAsString == 'out' && pe.propertyAsString) {
            def target = ASTUtils.asMethodOutput(obj)
            def names = target ? Emits.emitNames(target) : null
            if (names != null && !(pe.propertyAsString in names)) {
                findings.add('emit', file, pe.lineNumber,
                    "${obj.objectExpression.name}.out.${pe.propertyAsString}: ${obj.objectExpression.name} has no emit " +
                    "'${pe.propertyAsString}' (emits: ${names ? names.join(', ') : 'none'})")
            }
        }
        super.visitPropertyExpression(pe)
    }

    void visitMethodCallExpression(MethodCallExpression call) {
        if (call.isImplicitThis() && call.methodAsString ==~ /[A-Z][A-Z0-9_]*/ && !(call.methodAsString in callables)) {
            findings.add('undefined-call', file, call.lineNumber,
                "call of undefined process or workflow ${call.methodAsString}")
        }
        super.visitMethodCallExpression(call)
    }

    void visitClosureExpression(ClosureExpression ce) {
        closures.push(ce)
        super.visitClosureExpression(ce)
        closures.pop()
    }

    void visitVariableExpression(VariableExpression ve) {
        if (ve.name == 'it' && closures) {
            def declared = closures[-1].parameters?.any { p -> p.name == 'it' }
            if (!declared) {
                findings.add('implicit-it', file, ve.lineNumber, 'implicit closure parameter `it`: name the parameter')
            }
        }
        if (ve.name == 'Channel') {
            findings.add('channel-capital', file, ve.lineNumber, 'use `channel`, not `Channel`')
        }
        if (ve.name == 'params' && scope != 'entry') {
            findings.add('params-scope', file, ve.lineNumber,
                "`params` used in a ${scope}; pass the value from the entry workflow instead")
        }
        super.visitVariableExpression(ve)
    }

    void visitClassExpression(ClassExpression ce) {
        if (ce.type.nameWithoutPackage == 'Channel' && ce.lineNumber > 0) {
            def line = su.getSource().getLine(ce.lineNumber, null) ?: ''
            def text = ce.columnNumber > 0 ? line.substring(Math.min(line.length(), ce.columnNumber - 1)) : line
            if (text.startsWith('Channel') || !ce.columnNumber) {
                findings.add('channel-capital', file, ce.lineNumber, 'use `channel`, not `Channel`')
            }
        }
        super.visitClassExpression(ce)
    }
}

void visitAll(List<Statement> statements, RuleVisitor visitor) {
    statements.findAll { s -> s != null }.each { s -> s.visit(visitor) }
}

void visitExpr(Expression expr, RuleVisitor visitor) {
    if (expr != null) {
        expr.visit(visitor)
    }
}

// The source text of an AST node (from its first to its last line/column).
String sourceText(SourceUnit su, ASTNode first, ASTNode last = null) {
    last = last ?: first
    if (first == null || first.lineNumber < 1 || last.lastLineNumber < 1) {
        return null
    }
    def lines = su.getSource().getReader().readLines()
    def out = []
    for (int n = first.lineNumber; n <= last.lastLineNumber; n++) {
        def line = lines[n - 1]
        if (n == last.lastLineNumber) {
            line = line.substring(0, Math.min(line.length(), last.lastColumnNumber - 1))
        }
        if (n == first.lineNumber) {
            line = line.substring(Math.min(line.length(), first.columnNumber - 1))
        }
        out << line
    }
    return out.join('\n')
}

// String constants and GString fragments of a statement (the text a script is built from).
List<String> stringParts(Statement stmt) {
    def parts = []
    if (stmt == null) {
        return parts
    }
    def v = new CodeVisitorSupport() {
        void visitConstantExpression(ConstantExpression ce) {
            if (ce.value instanceof String) {
                parts << ce.value
            }
        }
        void visitGStringExpression(GStringExpression g) {
            g.strings.each { s -> parts << s.value }
            g.values.each { e -> e.visit(this) }
        }
        // method and property names are not strings of the script
        void visitMethodCallExpression(MethodCallExpression call) {
            call.objectExpression.visit(this)
            call.arguments.visit(this)
        }
        void visitPropertyExpression(PropertyExpression pe) {
            pe.objectExpression.visit(this)
        }
    }
    stmt.visit(v)
    return parts
}

// Names of the functions a statement calls (implicit this).
Set<String> calledFunctions(Statement stmt) {
    def names = [] as Set
    if (stmt == null) {
        return names
    }
    def v = new CodeVisitorSupport() {
        void visitMethodCallExpression(MethodCallExpression call) {
            if (call.isImplicitThis()) {
                names << call.methodAsString
            }
            super.visitMethodCallExpression(call)
        }
    }
    stmt.visit(v)
    return names
}

// The stub's script as [text] / [expr] parts, or null when it is not a plain (G)String.
List<Map> stubParts(Statement stub) {
    def statements = ASTUtils.asBlockStatements(stub)
    if (!statements) {
        return null
    }
    def last = statements[-1]
    def expr = last instanceof ExpressionStatement ? last.expression : null
    if (expr instanceof ConstantExpression) {
        return [[text: expr.value.toString()]]
    }
    if (expr instanceof GStringExpression) {
        def out = []
        expr.strings.eachWithIndex { s, i ->
            out << [text: s.value]
            if (i < expr.values.size()) {
                out << [expr: expr.values[i].text]
            }
        }
        return out
    }
    return null
}

Map describeCall(MethodCallExpression call) {
    def named = [:]
    ASTUtils.asNamedArgs(call).each { MapEntryExpression e ->
        def value = e.valueExpression
        named[e.keyExpression.text] = value instanceof ConstantExpression ? value.value : value.text
    }
    def positional = ASTUtils.asMethodCallArguments(call).findAll { a -> !(a instanceof org.codehaus.groovy.ast.expr.MapExpression) }
    def elements = []
    def pattern = null
    if (call.methodAsString == 'tuple') {
        positional.each { a ->
            if (a instanceof MethodCallExpression) {
                elements << describeCall(a)
            }
        }
    }
    else if (positional) {
        def first = positional[0]
        pattern = first instanceof ConstantExpression ? first.value?.toString() : first.text
    }
    return [qualifier: call.methodAsString, pattern: pattern, options: named, elements: elements]
}

boolean hasThreadsOption(Statement exec) {
    def found = false
    def v = new CodeVisitorSupport() {
        void visitGStringExpression(GStringExpression g) {
            g.values.eachWithIndex { e, i ->
                if (e.text == 'task.cpus' && g.strings[i].value.trim().endsWith('--threads')) {
                    found = true
                }
            }
            super.visitGStringExpression(g)
        }
    }
    exec?.visit(v)
    return found
}

// task.ext.args reaches the command: a GString value is task.ext.args or a variable set from it.
boolean usesExtArgs(Statement exec) {
    def names = ['task.ext.args'] as Set
    def used = false
    def declarations = new CodeVisitorSupport() {
        void visitDeclarationExpression(org.codehaus.groovy.ast.expr.DeclarationExpression d) {
            if (d.rightExpression.text.contains('task.ext.args')) {
                names << d.leftExpression.text
            }
            super.visitDeclarationExpression(d)
        }
    }
    exec?.visit(declarations)
    def values = new CodeVisitorSupport() {
        void visitGStringExpression(GStringExpression g) {
            if (g.values.any { e -> e.text in names }) {
                used = true
            }
            super.visitGStringExpression(g)
        }
    }
    exec?.visit(values)
    return used
}

Map checkProcess(ProcessNodeV1 pr, String file, SourceUnit su, Findings findings, Set<String> callables) {
    def directives = ASTUtils.asBlockStatements(pr.directives).collect { s -> ASTUtils.asMethodCallX(s) }.findAll { c -> c }
    def names = directives.collect { c -> c.methodAsString }
    def line = pr.lineNumber
    def tag = directives.find { c -> c.methodAsString == 'tag' }
    if (!tag) {
        findings.add('process-tag', file, line, "process ${pr.name} has no tag directive (tag \"\${meta.id}\")")
    }
    else if (!tag.text.contains('meta.id')) {
        findings.add('process-tag', file, tag.lineNumber, "process ${pr.name}: the tag should be \"\${meta.id}\"")
    }
    if (!('label' in names)) {
        findings.add('process-label', file, line, "process ${pr.name} has no label")
    }
    if (!ASTUtils.asBlockStatements(pr.stub)) {
        findings.add('process-stub', file, line, "process ${pr.name} has no stub: block")
    }
    if (pr.type == 'shell') {
        findings.add('process-shell', file, line, "process ${pr.name} uses a shell: block; use script:")
    }
    if (pr.type == 'script' && !usesExtArgs(pr.exec)) {
        findings.add('process-ext-args', file, line, "process ${pr.name} does not pass task.ext.args to its tool")
    }
    if (pr.type == 'script' && !hasThreadsOption(pr.exec)) {
        findings.add('process-threads', file, line, "process ${pr.name} does not pass --threads \${task.cpus}")
    }
    def outputs = ASTUtils.asBlockStatements(pr.outputs).collect { s -> ASTUtils.asMethodCallX(s) }.findAll { c -> c }
    def described = outputs.collect { c -> describeCall(c) }
    described.eachWithIndex { o, i ->
        if (!o.options.emit) {
            findings.add('process-emit', file, outputs[i].lineNumber, "process ${pr.name}: output ${i + 1} has no emit: name")
        }
    }
    def inputs = ASTUtils.asBlockStatements(pr.inputs).collect { s -> ASTUtils.asMethodCallX(s) }.findAll { c -> c }

    def visitor = new RuleVisitor(findings: findings, file: file, su: su, scope: 'process', callables: callables)
    visitAll([pr.directives, pr.inputs, pr.outputs, pr.exec, pr.stub], visitor)
    visitExpr(pr.when, visitor)

    return [
        name: pr.name,
        file: file,
        line: line,
        directives: names,
        labels: directives.findAll { c -> c.methodAsString == 'label' }.collect { c -> ASTUtils.asMethodCallArguments(c)[0].text },
        type: pr.type,
        inputs: inputs.collect { c -> describeCall(c) },
        outputs: described,
        script_strings: stringParts(pr.exec),
        script_source: ASTUtils.asBlockStatements(pr.exec) ? sourceText(su, ASTUtils.asBlockStatements(pr.exec)[0], ASTUtils.asBlockStatements(pr.exec)[-1]) : null,
        script_calls: calledFunctions(pr.exec) as List,
        stub: stubParts(pr.stub),
    ]
}

// Every assignment of a config file: [file, path (dotted; selector blocks as kind:name), value].
void dumpConfig(List statements, List<String> scope, String file, List out) {
    statements.each { stmt ->
        if (stmt instanceof nextflow.config.ast.ConfigBlockNode) {
            def name = stmt.kind ? "${stmt.kind}:${stmt.name}" : stmt.name
            dumpConfig(stmt.statements, scope + [name.toString()], file, out)
        }
        else if (stmt instanceof nextflow.config.ast.ConfigAssignNode) {
            def value = stmt.value
            def constant = value instanceof ConstantExpression
            out << [
                file: file,
                path: (scope + stmt.names).join('.'),
                constant: constant,
                value: constant ? value.value : value.text,
                line: stmt.lineNumber,
            ]
        }
        else if (stmt instanceof nextflow.config.ast.ConfigIncludeNode) {
            out << [file: file, path: (scope + ['includeConfig']).join('.'), constant: false, value: stmt.source.text, line: stmt.lineNumber]
        }
    }
}

// ------------------------------------------------------------------------------------------
// one case

Map checkCase(String caseName, List<String> paths) {
    def findings = new Findings(caseName: caseName)
    def files = paths.collect { p -> new File(p) }
    files.findAll { f -> !f.exists() }.each { f -> findings.add('missing-file', f.path, 0, "no such file") }
    files = files.findAll { f -> f.exists() }

    files.each { f -> groovyParse(f, findings) }

    // *.nf.test (nf-test) files get the Groovy parse only
    def scripts = files.findAll { f -> f.name.endsWith('.nf') }
    def configs = files.findAll { f -> !f.name.endsWith('.nf') && !f.name.endsWith('.nf.test') }
    def dump = [processes: [], workflows: [], functions: [], config: []]

    if (scripts) {
        def parser = new ScriptParser()
        scripts.each { f -> parser.parse(f) }
        parser.analyze()
        def sources = parser.compiler().getSources().values()
        sources.each { su -> collectMessages(su, findings, 'nf-error', 'nf-warning') }
        sources.each { su ->
            def ast = su.getAST()
            // also after errors: a name-resolution error leaves a complete AST to check
            if (!(ast instanceof ScriptNode)) {
                return
            }
            def file = sourceName(su)
            Set<String> callables = [] as Set
            callables.addAll(ast.getProcesses()*.name)
            callables.addAll(ast.getWorkflows().findAll { w -> !w.isEntry() }*.name)
            ast.getIncludes().each { inc -> inc.entries.each { e -> callables << e.getNameOrAlias() } }

            ast.getProcesses().each { pr ->
                if (pr instanceof ProcessNodeV1) {
                    dump.processes << checkProcess(pr, file, su, findings, callables)
                }
            }
            ast.getWorkflows().each { WorkflowNode w ->
                def visitor = new RuleVisitor(findings: findings, file: file, su: su,
                    scope: w.isEntry() ? 'entry' : 'workflow', callables: callables)
                visitAll([w.main, w.emits, w.publishers, w.onComplete, w.onError], visitor)
                dump.workflows << [name: w.isEntry() ? '' : w.name, file: file, emits: Emits.emitNames(w)]
            }
            ast.getFunctions().each { FunctionNode fn ->
                def visitor = new RuleVisitor(findings: findings, file: file, su: su, scope: 'function', callables: callables)
                visitAll([fn.code], visitor)
                dump.functions << [name: fn.name, file: file, strings: stringParts(fn.code), source: sourceText(su, fn)]
            }
        }
    }

    if (configs) {
        def parser = new ConfigParser()
        configs.each { f -> parser.parse(f) }
        parser.analyze()
        parser.compiler().getSources().values().each { su ->
            if (!su.getErrorCollector().hasErrors()) {
                // no plugins are declared, so the plugin registry is never contacted
                new ConfigSpecVisitor(su, new PluginSpecCache('http://127.0.0.1:9/'), false).visit()
            }
            collectMessages(su, findings, 'config-error', 'config-warning')
            def ast = su.getAST()
            if (ast instanceof nextflow.config.ast.ConfigNode) {
                dumpConfig(ast.getConfigStatements(), [], sourceName(su), dump.config)
            }
        }
    }

    findings.items.unique().each { item ->
        println((['FINDING', caseName] + item.collect { v -> v.toString().replace('\t', ' ') }).join('\t'))
    }
    println(['CASE', caseName, findings.items.unique().size(), files.size()].join('\t'))
    return [name: caseName, findings: findings.items.unique().size(), dump: dump]
}

// ------------------------------------------------------------------------------------------
// main

def dumpFile = null
def cases = []
def current = null
def argv = args as List
for (int i = 0; i < argv.size(); i++) {
    def a = argv[i]
    if (a == '--dump') {
        dumpFile = argv[++i]
    }
    else if (a == '--case') {
        current = [name: argv[++i], files: []]
        cases << current
    }
    else {
        if (current == null) {
            current = [name: 'main', files: []]
            cases << current
        }
        current.files << a
    }
}

def results = cases.collect { c -> checkCase(c.name, c.files) }
if (dumpFile) {
    new File(dumpFile).text = JsonOutput.prettyPrint(JsonOutput.toJson(results.collectEntries { r -> [r.name, r.dump] }))
}
System.exit(results.any { r -> r.findings > 0 } ? 1 : 0)
