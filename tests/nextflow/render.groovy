/*
 * Renders process scripts the way Nextflow does, for the emulated pipeline run of
 * test_emulated_run.py: a process's `script:` source (from checker.groovy --dump) is evaluated as
 * Groovy, after the functions it may call, with the task's variables bound (meta, task, inputs).
 *
 * Reads one JSON request per line on stdin:
 *     {"functions": ["def f() {...}", ...], "script": "def args = ...\n\"\"\"...\"\"\"",
 *      "binding": {"meta": {...}, "task": {...}, "<input>": ...}}
 * and answers each with one JSON line: {"script": "<rendered bash>"} or {"error": "..."}.
 */

import groovy.json.JsonOutput
import groovy.json.JsonSlurper

def reader = new BufferedReader(new InputStreamReader(System.in, 'UTF-8'))
def slurper = new JsonSlurper()
String line
while ((line = reader.readLine()) != null) {
    if (!line.trim()) {
        continue
    }
    def answer
    try {
        def request = slurper.parseText(line)
        def binding = new Binding()
        request.binding.each { name, value -> binding.setVariable(name, value) }
        def source = (request.functions + [request.script]).join('\n\n')
        def rendered = new GroovyShell(binding).evaluate(source)
        answer = [script: rendered.toString()]
    }
    catch (Throwable e) {
        answer = [error: e.toString()]
    }
    println(JsonOutput.toJson(answer))
    System.out.flush()
}
