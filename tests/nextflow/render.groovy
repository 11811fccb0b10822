/*
 * Evaluates Groovy source with bound variables, for test_groovy_functions.py: the helper
 * functions of main.nf and workflows/exo2micro.nf (from checker.groovy --dump), then an
 * expression that calls them.
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
