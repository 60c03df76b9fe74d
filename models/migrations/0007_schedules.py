from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from models.tables import JSONTextField
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0006_triggers')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Schedule',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('workflow', fields.ForeignKeyField('models.Workflow', source_field='workflow_id', db_constraint=True, to_field='id', related_name='schedules', on_delete=OnDelete.CASCADE)),
                ('cron', fields.CharField(null=True, max_length=120)),
                ('interval_seconds', fields.IntField(null=True)),
                ('timezone', fields.CharField(default='UTC', max_length=64)),
                ('input', JSONTextField(null=True, unique=False)),
                ('enabled', fields.BooleanField(default=True)),
                ('next_run_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('last_run_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'schedules', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A schedule: its workflow starts at each tick, by cron in a time zone or every N seconds.'},
            bases=['Model'],
        ),
        ops.AddIndex(
            model_name='Schedule',
            index=Index(fields=['enabled', 'next_run_at']),
        ),
    ]
